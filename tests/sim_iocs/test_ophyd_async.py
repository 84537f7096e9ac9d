"""ophyd-async against the simulated IOC, unchanged: ``adpilatus.PilatusDetector`` with the HDF
writer (StreamResource/StreamDatum) in a step scan and a fly scan, and ``epics.motor.Motor``.

ophyd-async connects every PV of the detector at once and checks each one's type, so
connecting at all already tests the PV set; its CA backend (aioca, libca) reads the EPICS_CA_*
environment tests/beamline_fixtures.py sets.
"""

from __future__ import annotations

import numpy as np
import pytest

from sim_iocs.ad_driver import DEFAULT_ATTRIBUTES_FILE
from tests.beamline_fixtures import ca_get, ca_get_array

EXPOSURE_S = 0.02


@pytest.fixture(scope="module")
def oa(sim_ioc):
    """A RunEngine, two detectors (step and fly file names) and the changer motor."""
    from bluesky import RunEngine
    from ophyd_async.core import StaticFilenameProvider, StaticPathProvider, init_devices
    from ophyd_async.epics.adcore import ADWriterFactory
    from ophyd_async.epics.adpilatus import PilatusDetector
    from ophyd_async.epics.motor import Motor

    folder = sim_ioc.data_root / "ophyd_async"
    folder.mkdir(exist_ok=True)
    RE = RunEngine({}, call_returns_result=True)
    p = sim_ioc.prefix
    with init_devices():
        step = PilatusDetector(p, ADWriterFactory.hdf(
            StaticPathProvider(StaticFilenameProvider("step"), folder)), name="step")
        fly = PilatusDetector(p, ADWriterFactory.hdf(
            StaticPathProvider(StaticFilenameProvider("fly"), folder)), name="fly")
        changer = Motor(f"{p}changer", name="changer")
    return RE, step, fly, changer, folder


def _i0_attribute(prefix: str):
    from ophyd_async.epics.adcore import NDAttributePv, NDAttributePvDbrType
    from ophyd_async.epics.core import epics_signal_r

    return [NDAttributePv("I0", epics_signal_r(float, f"{prefix}mon:I0"),
                          NDAttributePvDbrType.DBR_DOUBLE, "incident photons")]


def _collect(RE, plan) -> list[tuple[str, dict]]:
    docs: list[tuple[str, dict]] = []
    RE(plan, lambda name, doc: docs.append((name, doc)))
    return docs


def _path(resource: dict) -> str:
    return resource["uri"].removeprefix("file://localhost")


def test_motor_moves_the_changer_within_its_limits(oa, sim_ioc):
    import bluesky.plan_stubs as bps
    from bluesky.utils import FailedStatus
    from ophyd_async.epics.motor import MotorLimitsError

    RE, _, _, changer, _ = oa
    RE(bps.mv(changer, 2))
    assert RE(bps.rd(changer)).plan_result == pytest.approx(2.0)
    assert ca_get(f"{sim_ioc.prefix}changer.DMOV") == 1
    with pytest.raises(FailedStatus) as info:
        RE(bps.mv(changer, float(max(s.slot for s in sim_ioc.tray)) + 0.5))
    assert isinstance(info.value.__cause__, MotorLimitsError)
    assert RE(bps.rd(changer.motor_egu)).plan_result == "slot"


def test_step_scan_stream_resources_and_ndattributes(oa, sim_ioc):
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp
    import h5py
    from ophyd_async.epics.adcore import setup_ndattributes

    RE, det, _, changer, folder = oa
    p = sim_ioc.prefix
    RE(bps.mv(changer, 1, det.driver.acquire_time, EXPOSURE_S))
    RE(setup_ndattributes(det.driver, _i0_attribute(p)))
    try:
        docs = _collect(RE, bp.count([det], 3))
    finally:
        RE(bps.abs_set(det.driver.nd_attributes_file, DEFAULT_ATTRIBUTES_FILE, wait=True))
    names = [n for n, _ in docs]
    assert names.count("event") == 3
    resources = {d["data_key"]: d for n, d in docs if n == "stream_resource"}
    assert set(resources) == {"step", "I0"}
    assert resources["step"]["parameters"]["dataset"] == "/entry/data/data"
    assert resources["I0"]["parameters"]["dataset"] == "/entry/instrument/NDAttributes/I0"
    datums = [d for n, d in docs if n == "stream_datum"]
    assert sorted((d["indices"]["start"], d["indices"]["stop"]) for d in datums
                  if d["stream_resource"] == resources["step"]["uid"]) == [(0, 1), (1, 2),
                                                                            (2, 3)]
    descriptor = next(d for n, d in docs if n == "descriptor")
    ny, nx = int(ca_get(f"{p}cam1:ArraySizeY_RBV")), int(ca_get(f"{p}cam1:ArraySizeX_RBV"))
    assert list(descriptor["data_keys"]["step"]["shape"]) == [1, ny, nx]
    assert descriptor["data_keys"]["step"]["dtype_numpy"] == "<i4"
    assert descriptor["data_keys"]["I0"]["source"] == f"ca://{p}mon:I0"

    path = _path(resources["step"])
    assert path == str(folder / "step.h5")
    with h5py.File(path, "r") as f:
        data = f["/entry/data/data"][()]
        i0 = f["/entry/instrument/NDAttributes/I0"][()]
        recorded = set(f["/entry/instrument/NDAttributes"])
    assert data.shape == (3, ny, nx) and data.dtype == np.dtype("<i4")
    last = np.asarray(ca_get_array(f"{p}image1:ArrayData"), dtype=np.int32).reshape(ny, nx)
    np.testing.assert_array_equal(data[-1], last)  # the frames are what the IOC exposed
    # one I0 per frame: photons of a 0.02 s exposure at 1e12 ph/s, the last one as served
    assert i0.shape == (3,) and np.allclose(i0, 1e12 * EXPOSURE_S, rtol=0.05)
    assert i0[-1] == pytest.approx(float(ca_get(f"{p}mon:I0")))
    assert len(set(i0.tolist())) == 3
    # the XML replaced the IOC's default set (I0, Transmission); the plugin's own stay
    assert recorded == {"I0", "NDArrayUniqueId", "NDArrayTimeStamp", "NDArrayEpicsTSSec",
                        "NDArrayEpicsTSnSec"}


def test_fly_scan_n_frames_at_a_set_rate_read_while_open(oa, sim_ioc):
    import bluesky.plan_stubs as bps
    import h5py
    from ophyd_async.core import TriggerInfo
    from ophyd_async.epics.adcore import setup_ndattributes

    RE, _, det, changer, folder = oa
    n, live, dead = 12, EXPOSURE_S, 0.03
    live_frames: dict[int, np.ndarray] = {}

    def read_while_open(name, doc):
        """What the live scorer does: read each StreamDatum's frames from the open file."""
        if name == "stream_datum" and doc["stream_resource"] == resources.get("fly"):
            with h5py.File(folder / "fly.h5", "r", swmr=True) as f:
                ds = f["/entry/data/data"]
                ds.refresh()
                for i in range(doc["indices"]["start"], doc["indices"]["stop"]):
                    live_frames[i] = ds[i]
        elif name == "stream_resource":
            resources[doc["data_key"]] = doc["uid"]

    resources: dict[str, str] = {}

    def fly_plan():
        yield from bps.mv(changer, 2)
        yield from setup_ndattributes(det.driver, _i0_attribute(sim_ioc.prefix))
        yield from bps.stage(det, wait=True)
        yield from bps.open_run()
        yield from bps.prepare(det, TriggerInfo(number_of_events=n, livetime=live,
                                                deadtime=dead), wait=True)
        yield from bps.declare_stream(det, name="primary", collect=True)
        yield from bps.kickoff(det, wait=True)
        yield from bps.collect_while_completing([det], [det], flush_period=0.1,
                                                stream_name="primary")
        yield from bps.close_run()
        yield from bps.unstage(det, wait=True)

    docs: list[tuple[str, dict]] = []
    RE.subscribe(read_while_open)
    try:
        RE(fly_plan(), lambda name, doc: docs.append((name, doc)))
    finally:
        RE(bps.abs_set(det.driver.nd_attributes_file, DEFAULT_ATTRIBUTES_FILE, wait=True))
    assert set(resources) == {"fly", "I0"}
    datums = [d for name, d in docs if name == "stream_datum"
              and d["stream_resource"] == resources["fly"]]
    covered = [i for d in datums for i in range(d["indices"]["start"], d["indices"]["stop"])]
    assert covered == list(range(n))
    assert sorted(live_frames) == list(range(n))
    with h5py.File(folder / "fly.h5", "r") as f:  # closed again: Capture = 0 at unstage
        data = f["/entry/data/data"][()]
        i0 = f["/entry/instrument/NDAttributes/I0"][()]
        stamps = f["/entry/instrument/NDAttributes/NDArrayTimeStamp"][()]
        uids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][()]
    assert data.shape[0] == n and i0.shape == (n,) and np.all(i0 > 0)
    for i, frame in live_frames.items():
        np.testing.assert_array_equal(frame, data[i])
    assert np.all(np.diff(uids) == 1)
    # internal trigger: the detector paced itself at AcquirePeriod = livetime + deadtime
    p = sim_ioc.prefix
    assert float(ca_get(f"{p}cam1:AcquirePeriod_RBV")) == pytest.approx(live + dead)
    assert float(ca_get(f"{p}cam1:NumImages_RBV")) == n
    assert np.median(np.diff(stamps)) >= 0.9 * (live + dead)  # not faster than asked
    assert ca_get(f"{p}HDF1:Capture_RBV") == b"Done"
    assert ca_get(f"{p}cam1:DetectorState_RBV") == b"Idle"


def test_frames_follow_the_changer(oa):
    """A frame of the empty cell (position 0) is not a frame of a sample."""
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp
    import h5py

    RE, det, _, changer, _ = oa
    totals = {}
    for slot in (0, 2):
        RE(bps.mv(changer, slot, det.driver.acquire_time, EXPOSURE_S))
        docs = _collect(RE, bp.count([det], 1))
        resource = next(d for n, d in docs if n == "stream_resource")
        with h5py.File(_path(resource), "r") as f:
            frame = f["/entry/data/data"][0]
        totals[slot] = float(frame[frame >= 0].sum())
    assert totals[2] > 100 * totals[0]


def test_monitor_and_simulation_pvs_have_plain_types(oa, sim_ioc):
    """mon: are analog inputs (float), sim: switches are 0/1 integers (also usable as bool)."""
    import bluesky.plan_stubs as bps
    from ophyd_async.core import init_devices
    from ophyd_async.epics.core import epics_signal_r, epics_signal_rw

    RE = oa[0]
    p = sim_ioc.prefix
    with init_devices():
        i0 = epics_signal_r(float, f"{p}mon:I0")
        transmission = epics_signal_r(float, f"{p}mon:Transmission")
        ready = epics_signal_r(int, f"{p}sim:Ready")
        shutter = epics_signal_rw(bool, f"{p}sim:Shutter")
        timeout = epics_signal_rw(int, f"{p}sim:DetectorTimeout")
        dump = epics_signal_rw(float, f"{p}sim:BeamDump")
    assert RE(bps.rd(ready)).plan_result == 1
    assert RE(bps.rd(shutter)).plan_result is True
    assert RE(bps.rd(timeout)).plan_result == 0
    assert RE(bps.rd(dump)).plan_result == 0.0
    assert RE(bps.rd(i0)).plan_result >= 0.0
    assert 0.0 < RE(bps.rd(transmission)).plan_result <= 1.0
