"""Stock ophyd against the simulated IOC, unchanged: ``SingleTrigger + PilatusDetector`` with
``HDF5Plugin + FileStoreHDF5IterativeWrite`` and ``ImagePlugin``, and ``EpicsMotor``, in a
real RunEngine; frames read back through area-detector-handlers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sim_iocs.ad_driver import DEFAULT_ATTRIBUTES_FILE
from tests.beamline_fixtures import ca_put

EXPOSURE_S = 0.1  # SingleTrigger races a trigger shorter than its own put + bookkeeping


@pytest.fixture(scope="module")
def stock(sim_ioc):
    """A stock-ophyd detector and changer (classes from ophyd.areadetector, ophyd)."""
    from ophyd import Component as Cpt
    from ophyd import EpicsMotor
    from ophyd.areadetector import HDF5Plugin, ImagePlugin, PilatusDetector, SingleTrigger
    from ophyd.areadetector.filestore_mixins import FileStoreHDF5IterativeWrite

    write_path = str(sim_ioc.data_root / "stock_ophyd") + "/"
    os.makedirs(write_path, exist_ok=True)

    class HDF5PluginWithFileStore(HDF5Plugin, FileStoreHDF5IterativeWrite):
        pass

    class Det(SingleTrigger, PilatusDetector):
        image1 = Cpt(ImagePlugin, "image1:")
        hdf1 = Cpt(HDF5PluginWithFileStore, "HDF1:", write_path_template=write_path,
                   read_path_template=write_path)

    # The IOC is shared: an ophyd-async writer may have left LazyOpen = Yes, with which the
    # file opens (and FileNumber advances) at the first frame, not at Capture = 1, and stock
    # ophyd's file name (FileNumber_RBV - 1) would be wrong - on a real IOC too.
    ca_put(f"{sim_ioc.prefix}HDF1:LazyOpen", 0)
    # ... and its own NDAttributes XML in place of the IOC's built-in I0/Transmission set
    ca_put(f"{sim_ioc.prefix}cam1:NDAttributesFile", DEFAULT_ATTRIBUTES_FILE)
    det = Det(sim_ioc.prefix, name="det")
    changer = EpicsMotor(f"{sim_ioc.prefix}changer", name="changer")
    det.wait_for_connection(timeout=15)
    changer.wait_for_connection(timeout=15)
    det.hdf1.kind = "normal"
    det.cam.acquire_time.put(EXPOSURE_S)
    det.cam.acquire_period.put(EXPOSURE_S)
    det.hdf1.warmup()  # as after a real IOC boot: the plugin must see one array
    return det, changer


def _run(plan):
    from bluesky import RunEngine

    docs: list[tuple[str, dict]] = []
    RunEngine({})(plan, lambda name, doc: docs.append((name, doc)))
    return docs


def test_count_writes_ad_hdf5_read_back_by_the_stock_handler(stock, sim_ioc):
    import bluesky.plans as bp
    import h5py
    from area_detector_handlers.handlers import AreaDetectorHDF5Handler
    from event_model import Filler

    det, changer = stock
    _run(_mv(changer, 1))
    docs = _run(bp.count([det], 3))
    names = [n for n, _ in docs]
    assert names.count("resource") == 1 and names.count("datum") == 3
    assert names.count("event") == 3
    resource = next(d for n, d in docs if n == "resource")
    assert resource["spec"] == "AD_HDF5"
    assert resource["resource_kwargs"] == {"frame_per_point": 1}
    path = os.path.join(resource["root"], resource["resource_path"])
    assert path.startswith(str(sim_ioc.data_root))
    descriptor = next(d for n, d in docs if n == "descriptor")
    ny, nx = int(det.cam.array_size.array_size_y.get()), int(det.cam.array_size.array_size_x.get())
    assert descriptor["data_keys"]["det_image"]["shape"] == (1, ny, nx) or \
        list(descriptor["data_keys"]["det_image"]["shape"]) == [1, ny, nx]

    with h5py.File(path, "r") as f:  # closed by unstage (Capture = 0)
        written = f["/entry/data/data"][()]
        i0 = f["/entry/instrument/NDAttributes/I0"][()]
        uid = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][()]
    assert written.shape == (3, ny, nx) and written.dtype == np.dtype("<i4")
    assert i0.shape == (3,) and np.all(i0 > 0)
    assert np.all(np.diff(uid) == 1)
    assert len({frame.tobytes() for frame in written}) == 3  # three exposures, not one copy

    # the stock handler, directly and through event_model's Filler
    handler = AreaDetectorHDF5Handler(path, **resource["resource_kwargs"])
    datums = [d for n, d in docs if n == "datum"]
    for i, datum in enumerate(datums):
        np.testing.assert_array_equal(handler(**datum["datum_kwargs"])[0], written[i])
    handler.close()
    filler = Filler({"AD_HDF5": AreaDetectorHDF5Handler}, inplace=False)
    filled = [filler(n, d)[1] for n, d in docs]
    events = [d for (n, _), d in zip(docs, filled, strict=True) if n == "event"]
    for i, event in enumerate(events):
        np.testing.assert_array_equal(np.asarray(event["data"]["det_image"])[0], written[i])
    filler.close()


def test_image_plugin_serves_the_last_frame(stock):
    import bluesky.plans as bp
    import h5py

    det, _ = stock
    docs = _run(bp.count([det], 1))
    resource = next(d for n, d in docs if n == "resource")
    with h5py.File(os.path.join(resource["root"], resource["resource_path"]), "r") as f:
        frame = f["/entry/data/data"][-1]
    flat = np.asarray(det.image1.array_data.get())
    ny, nx = det.image1.array_size.height.get(), det.image1.array_size.width.get()
    assert det.image1.ndimensions.get() in (2, "2")
    np.testing.assert_array_equal(flat.reshape(ny, nx), frame)
    assert (frame == -1).any()  # module gaps, as a Pilatus frame has


def _mv(motor, position):
    import bluesky.plan_stubs as bps

    def plan():
        yield from bps.open_run()
        yield from bps.mv(motor, position)
        yield from bps.close_run()

    return plan()


def _integrated(det) -> float:
    frame = np.asarray(det.image1.array_data.get())
    return float(frame[frame >= 0].sum())


def test_epics_motor_moves_the_changer_and_frames_follow_the_slot(stock, sim_ioc):
    import bluesky.plans as bp
    from ophyd.utils import LimitError

    det, changer = stock
    assert changer.egu == "slot"
    last = float(max(s.slot for s in sim_ioc.tray))  # limits: empty cell .. last slot
    assert changer.limits == (0.0, last)
    with pytest.raises(LimitError):
        changer.move(last + 1.0, wait=True)
    counts = {}
    for slot in (0, 1, 3):
        status = changer.set(slot)
        status.wait(timeout=20)
        assert changer.position == pytest.approx(slot)
        assert changer.motor_done_move.get() == 1
        _run(bp.count([det], 1))
        counts[slot] = _integrated(det)
    # empty cell << PMMA (weak scatterer) << PS/PMMA 50:50 blend
    assert counts[0] * 3 < counts[3] < counts[1] / 10


def test_epics_motor_stop(stock):
    import time

    det, changer = stock
    changer.move(0, wait=True)
    changer.velocity.put(2.0)
    try:
        status = changer.move(5, wait=False)
        time.sleep(0.3)
        changer.stop()
        deadline = time.monotonic() + 5
        while not status.done and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status.done
        time.sleep(0.2)
        assert 0 < changer.position < 2
        assert changer.motor_done_move.get() == 1 and not changer.moving
        assert changer.user_setpoint.get() == pytest.approx(changer.position, abs=1e-9)
    finally:
        changer.velocity.put(5.0)
        changer.move(0, wait=True)
