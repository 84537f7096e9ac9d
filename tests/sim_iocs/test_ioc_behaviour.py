"""The simulated IOC over plain Channel Access: the data root, file-writer modes, NDAttributes,
the simulation behind the detector (slots, shutter, faults) and the motor record."""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from sim_iocs.ad_driver import DEFAULT_ATTRIBUTES_FILE
from tests.beamline_fixtures import ca_get, ca_get_array, ca_get_str, move_changer

EXPOSURE_S = 0.02


def _write(pv: str, value, notify: bool = True, timeout: float = 10.0) -> None:
    from caproto.sync.client import write

    write(pv, value, notify=notify, timeout=timeout, repeater=False)


@pytest.fixture()
def hdf(sim_ioc):
    """HDF1: enabled, blocking, in ``<data_root>/raw/``; restored (disabled, Stream) after."""
    p = f"{sim_ioc.prefix}HDF1:"
    folder = sim_ioc.data_root / "raw"
    folder.mkdir(exist_ok=True)
    for pv, value in (("EnableCallbacks", 1), ("BlockingCallbacks", 1), ("LazyOpen", 0),
                      ("AutoIncrement", 1), ("FileName", "raw"), ("NumCapture", 0),
                      ("FileTemplate", "%s%s_%3.3d.h5")):
        _write(p + pv, value)
    _write(p + "FilePath", str(folder))
    _write(f"{sim_ioc.prefix}cam1:AcquireTime", EXPOSURE_S)
    _write(f"{sim_ioc.prefix}cam1:AcquirePeriod", 0.0)
    # the IOC is shared: an ophyd-async test may have loaded its own attribute XML
    _write(f"{sim_ioc.prefix}cam1:NDAttributesFile", DEFAULT_ATTRIBUTES_FILE)
    yield p, folder
    _write(p + "Capture", 0)
    for pv, value in (("EnableCallbacks", 0), ("FileWriteMode", 2), ("AutoSave", 0),
                      ("BlockingCallbacks", 0), ("NumCapture", 0)):
        _write(p + pv, value)
    _write(f"{sim_ioc.prefix}cam1:ImageMode", 0)
    _write(f"{sim_ioc.prefix}cam1:NumImages", 1)


def _acquire(prefix: str, n: int = 1) -> None:
    """Acquire n frames; the put completes when the acquisition has ended."""
    _write(f"{prefix}cam1:ImageMode", 0 if n == 1 else 1)
    _write(f"{prefix}cam1:NumImages", n)
    _write(f"{prefix}cam1:Acquire", 1, timeout=30)
    assert ca_get_str(f"{prefix}cam1:DetectorState_RBV") == "Idle"


def _frame(prefix: str) -> np.ndarray:
    ny, nx = int(ca_get(f"{prefix}image1:ArraySize1_RBV")), int(
        ca_get(f"{prefix}image1:ArraySize0_RBV"))
    return np.asarray(ca_get_array(f"{prefix}image1:ArrayData"), np.int32).reshape(ny, nx)


def _counts(prefix: str) -> float:
    f = _frame(prefix)
    return float(f[f >= 0].sum())


def test_file_path_gets_a_slash_and_escapes_are_refused(hdf, sim_ioc):
    p, folder = hdf
    assert ca_get_str(p + "FilePath_RBV") == f"{folder}/"
    assert ca_get_str(p + "FilePathExists_RBV") == "Yes"
    outside = sim_ioc.data_root.parent / "escaped"
    outside.mkdir(exist_ok=True)
    for bad in (f"{sim_ioc.data_root}/../escaped", str(outside), "relative/path"):
        _write(p + "FilePath", bad)
        assert ca_get_str(p + "FilePath_RBV") == bad + "/"  # shown, as areaDetector does
        assert ca_get_str(p + "FilePathExists_RBV") == "No"
        assert "refused" in ca_get_str(p + "WriteMessage") or "relative" in ca_get_str(
            p + "WriteMessage")
        _write(p + "Capture", 1)
        assert ca_get_str(p + "Capture_RBV") == "Done"  # nothing opened
    _acquire(sim_ioc.prefix)
    assert list(outside.iterdir()) == []
    assert "outside the data root" in sim_ioc.log_path.read_text()
    _write(p + "FilePath", str(folder))
    assert ca_get_str(p + "FilePathExists_RBV") == "Yes"


def test_stream_mode_numcapture_stops_and_closes(hdf, sim_ioc):
    p, folder = hdf
    _write(p + "FileWriteMode", "Stream")
    _write(p + "NumCapture", 2)
    number = int(ca_get(p + "FileNumber_RBV"))
    _write(p + "Capture", 1)
    assert ca_get_str(p + "Capture_RBV") == "Capture"
    assert int(ca_get(p + "FileNumber_RBV")) == number + 1  # incremented at the open
    path = Path(ca_get_str(p + "FullFileName_RBV"))
    assert path == folder / f"raw_{number:03d}.h5"
    _acquire(sim_ioc.prefix, 3)
    assert int(ca_get(p + "NumCaptured_RBV")) == 2
    assert ca_get_str(p + "Capture_RBV") == "Done"  # stopped by itself after NumCapture
    with h5py.File(path, "r") as f:  # and closed
        assert f["/entry/data/data"].shape[0] == 2
        assert f["/entry/instrument/detector/data"].shape[0] == 2  # areaDetector's link
        assert set(f["/entry/instrument/NDAttributes"]) >= {"I0", "Transmission",
                                                            "NDArrayUniqueId"}


def test_capture_and_single_modes(hdf, sim_ioc):
    p, folder = hdf
    _write(p + "FileWriteMode", "Capture")
    _write(p + "NumCapture", 2)
    _write(p + "AutoSave", 1)
    _write(p + "Capture", 1)
    _acquire(sim_ioc.prefix, 2)
    assert ca_get_str(p + "Capture_RBV") == "Done"
    with h5py.File(ca_get_str(p + "FullFileName_RBV"), "r") as f:
        assert f["/entry/data/data"].shape[0] == 2
    # Single: one file per frame (AutoSave), Capture is not for this mode
    _write(p + "FileWriteMode", "Single")
    _write(p + "Capture", 1)
    assert ca_get_str(p + "Capture_RBV") == "Done"
    before = int(ca_get(p + "FileNumber_RBV"))
    _acquire(sim_ioc.prefix, 2)
    assert int(ca_get(p + "FileNumber_RBV")) == before + 2
    for n in (before, before + 1):
        with h5py.File(folder / f"raw_{n:03d}.h5", "r") as f:
            assert f["/entry/data/data"].shape[0] == 1


def test_ndattributes_xml_replaces_the_set(hdf, sim_ioc):
    p, _ = hdf
    cam = f"{sim_ioc.prefix}cam1:"
    xml = ('<Attributes><Attribute name="AcqTime" type="PARAM" source="ACQ_TIME" '
           'datatype="DOUBLE"/><Attribute name="Pos" type="EPICS_PV" '
           f'source="{sim_ioc.prefix}changer.RBV" dbrtype="DBR_DOUBLE"/>'
           '<Attribute name="Gone" type="EPICS_PV" source="NOT:served" '
           'dbrtype="DBR_DOUBLE"/></Attributes>')
    try:
        _write(cam + "NDAttributesFile", "<Attributes><Attribute name=")
        assert ca_get_str(cam + "NDAttributesStatus") == "XML syntax error"
        _write(cam + "NDAttributesFile", xml)
        assert ca_get_str(cam + "NDAttributesStatus") == "Attributes file OK"
        _write(p + "FileWriteMode", "Stream")
        _write(p + "NumCapture", 1)
        _write(p + "Capture", 1)
        _acquire(sim_ioc.prefix)
        with h5py.File(ca_get_str(p + "FullFileName_RBV"), "r") as f:
            group = f["/entry/instrument/NDAttributes"]
            assert "I0" not in group
            assert group["AcqTime"][0] == pytest.approx(EXPOSURE_S)
            assert group["Pos"][0] == pytest.approx(float(ca_get(
                f"{sim_ioc.prefix}changer.RBV")))
            assert np.isnan(group["Gone"][0])  # not served here: NaN, and logged
            assert group["AcqTime"].attrs["NDAttrSource"] == "ACQ_TIME"
        assert "NOT:served" in sim_ioc.log_path.read_text()
    finally:
        _write(cam + "NDAttributesFile", DEFAULT_ATTRIBUTES_FILE)


def test_frames_match_the_slot_shutter_and_transient_fault(sim_ioc):
    p = sim_ioc.prefix
    _write(f"{p}cam1:AcquireTime", EXPOSURE_S)
    counts = {}
    for slot in (0, 1, 3):
        move_changer(p, slot)
        _acquire(p)
        counts[slot] = _counts(p)
        transmission = float(ca_get(f"{p}mon:Transmission"))
        assert float(ca_get(f"{p}mon:I0")) == pytest.approx(1e12 * EXPOSURE_S, rel=0.05)
        if slot == 0:
            assert transmission == pytest.approx(0.95)  # the empty cell's windows only
        else:
            assert transmission < 0.9
    assert counts[0] * 3 < counts[3] < counts[1] / 10
    # shutter closed: a dark frame and no I0
    _write(f"{p}sim:Shutter", 0)
    try:
        _acquire(p)
        assert _counts(p) < counts[0] / 10
        assert float(ca_get(f"{p}mon:I0")) == 0.0
    finally:
        _write(f"{p}sim:Shutter", 1)
    # slot 9: a beam dump on its first exposure only
    move_changer(p, 9)
    _acquire(p)
    first = _counts(p)
    _acquire(p)
    second = _counts(p)
    assert first < 0.6 * second
    move_changer(p, 0)


def test_global_faults_and_a_detector_that_never_finishes(sim_ioc):
    p = sim_ioc.prefix
    _write(f"{p}cam1:AcquireTime", EXPOSURE_S)
    move_changer(p, 1)
    _acquire(p)
    clean_max = int(_frame(p).max())
    _write(f"{p}sim:HotPixels", 1.0)
    try:
        _acquire(p)
        assert int(_frame(p).max()) > 10 * clean_max
    finally:
        _write(f"{p}sim:HotPixels", 0.0)
    _write(f"{p}sim:DetectorTimeout", 1)
    try:
        _write(f"{p}cam1:Acquire", 1, notify=False)
        time.sleep(4 * EXPOSURE_S + 0.3)
        assert ca_get_str(f"{p}cam1:Acquire_RBV") == "Acquire"
        assert ca_get_str(f"{p}cam1:DetectorState_RBV") == "Acquire"
        _write(f"{p}cam1:Acquire", 0)  # abort
        assert ca_get_str(f"{p}cam1:DetectorState_RBV") == "Aborted"
        assert ca_get_str(f"{p}cam1:Acquire_RBV") == "Done"
        assert ca_get_str(f"{p}cam1:Armed") == "Unarmed"
    finally:
        _write(f"{p}sim:DetectorTimeout", 0)
    move_changer(p, 0)


def test_unsupported_settings_are_refused_loudly(sim_ioc):
    cam = f"{sim_ioc.prefix}cam1:"
    _write(cam + "DataType", "Float64")
    assert ca_get_str(cam + "DataType_RBV") == "Int32"
    _write(cam + "TriggerMode", "Ext. Trigger")
    try:
        counter = int(ca_get(cam + "ArrayCounter_RBV"))
        _write(cam + "Acquire", 1)  # refused: completes at once, nothing acquired
        assert int(ca_get(cam + "ArrayCounter_RBV")) == counter
        assert "not simulated" in ca_get_str(cam + "StatusMessage_RBV")
    finally:
        _write(cam + "TriggerMode", "Internal")


def test_motor_record_limits_and_set_mode(sim_ioc):
    m = f"{sim_ioc.prefix}changer"
    last = float(max(s.slot for s in sim_ioc.tray))  # limits: empty cell .. last slot
    move_changer(sim_ioc.prefix, 1)
    assert (float(ca_get(m + ".LLM")), float(ca_get(m + ".HLM"))) == (0.0, last)
    _write(m + ".VAL", last + 2.0, timeout=5)  # outside: refused, nothing moves
    assert int(ca_get(m + ".LVIO")) == 1
    assert float(ca_get(m + ".RBV")) == 1.0 and float(ca_get(m + ".VAL")) == 1.0
    # SET mode: redefine the user position without moving (the dial stays)
    _write(m + ".SET", "Set")
    try:
        _write(m + ".VAL", 101.0)
    finally:
        _write(m + ".SET", "Use")
    try:
        assert float(ca_get(m + ".RBV")) == 101.0 and float(ca_get(m + ".DRBV")) == 1.0
        assert float(ca_get(m + ".OFF")) == 100.0
        assert (float(ca_get(m + ".LLM")), float(ca_get(m + ".HLM"))) == (100.0, 100.0 + last)
    finally:
        _write(m + ".OFF", 0.0)
    assert float(ca_get(m + ".RBV")) == 1.0 and float(ca_get(m + ".HLM")) == last
    move_changer(sim_ioc.prefix, 0)


def test_stopping_the_ioc_closes_an_open_file(tmp_path, monkeypatch):
    """SIGTERM while a file is being written: the IOC closes it, nothing is lost."""
    from pbi_bluesky.testing.iocs import loopback_epics_env, start_sim_ioc, stop_sim_ioc

    env = loopback_epics_env()  # its own ports: two servers on one UDP port share searches
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ioc = start_sim_ioc(tmp_path, [{"slot": 1, "sample": "a", "composition": "50:50"}],
                        detector="Pilatus300k", env=env)
    try:
        p = ioc.prefix
        hdf = f"{p}HDF1:"
        for pv, value in (("EnableCallbacks", 1), ("BlockingCallbacks", 1), ("SWMRMode", 1),
                          ("FileWriteMode", "Stream"), ("NumCapture", 0), ("LazyOpen", 1),
                          ("FileName", "open"), ("FileTemplate", "%s%s.h5")):
            _write(hdf + pv, value)
        _write(hdf + "FilePath", str(ioc.data_root))
        _write(f"{p}cam1:AcquireTime", EXPOSURE_S)
        _write(hdf + "Capture", 1)
        _acquire(p, 2)
        assert int(ca_get(hdf + "NumCaptured_RBV")) == 2
        assert ca_get_str(hdf + "Capture_RBV") == "Capture"  # still open
    finally:
        stop_sim_ioc(ioc)
    assert ioc.process.returncode == 0, ioc.log_tail()
    with h5py.File(ioc.data_root / "open.h5", "r") as f:  # no SWMR flag left behind
        assert f["/entry/data/data"].shape[0] == 2
    assert "closed" in ioc.log_tail()
