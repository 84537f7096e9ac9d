"""Our devices are stock ophyd / ophyd-async classes built from beamline.yaml."""

from __future__ import annotations

import pytest

from tests.beamline_fixtures import REPO_ROOT, ca_put

EXAMPLE = REPO_ROOT / "profiles" / "examples" / "beamline_pilatus.yaml"


def test_example_real_beamline_yaml_builds_stock_ophyd_devices_with_its_pv_names():
    from ophyd import EpicsMotor, EpicsSignalRO
    from ophyd.areadetector import PilatusDetector, SingleTrigger
    from ophyd.areadetector.filestore_mixins import FileStoreHDF5IterativeWrite

    from pbi_bluesky.config import load_config
    from pbi_bluesky.devices import make_ophyd_beamline

    cfg = load_config(EXAMPLE)
    bl = make_ophyd_beamline(cfg, connect=False)
    det = bl.detector
    assert isinstance(det, SingleTrigger) and isinstance(det, PilatusDetector)
    assert isinstance(det.hdf1, FileStoreHDF5IterativeWrite)
    assert isinstance(bl.changer, EpicsMotor)
    assert all(isinstance(m, EpicsSignalRO) for m in bl.monitors)
    assert det.cam.acquire.pvname == "XF:12ID2-ES{Det:1M}cam1:Acquire_RBV"
    assert det.cam.acquire.setpoint_pvname == "XF:12ID2-ES{Det:1M}cam1:Acquire"
    assert det.hdf1.file_path.pvname == "XF:12ID2-ES{Det:1M}HDF1:FilePath_RBV"
    assert det.image1.array_data.pvname == "XF:12ID2-ES{Det:1M}image1:ArrayData"
    assert bl.changer.user_setpoint.pvname == "XF:12ID2-ES{Smpl-Ax:X}Mtr.VAL"
    assert bl.changer.motor_done_move.pvname == "XF:12ID2-ES{Smpl-Ax:X}Mtr.DMOV"
    assert [m.pvname for m in bl.monitors] == ["XF:12ID2-BI{EM:1}Current1:MeanValue_RBV",
                                              "XF:12ID2-BI{EM:2}Transmission-I"]
    assert det.hdf1.write_path_template.rstrip("/") == "/nsls2/data/saxs/proposals/current/raw"
    assert bl.image_key == "saxs_image"


def test_example_real_beamline_yaml_builds_stock_ophyd_async_devices():
    from bluesky import RunEngine
    from ophyd_async.epics.adpilatus import PilatusDetector
    from ophyd_async.epics.motor import Motor

    from pbi_bluesky.config import load_config
    from pbi_bluesky.devices import make_async_beamline

    RunEngine({})
    cfg = load_config(EXAMPLE)
    bl = make_async_beamline(cfg, connect=False)
    assert isinstance(bl.detector, PilatusDetector) and isinstance(bl.changer, Motor)
    assert bl.detector.driver.acquire.source == "ca://XF:12ID2-ES{Det:1M}cam1:Acquire_RBV"
    assert bl.detector.hdf.capture.source == "ca://XF:12ID2-ES{Det:1M}HDF1:Capture_RBV"
    assert bl.changer.user_setpoint.source == "ca://XF:12ID2-ES{Smpl-Ax:X}Mtr.VAL"
    assert bl.monitors[0].source == "ca://XF:12ID2-BI{EM:1}Current1:MeanValue_RBV"
    assert bl.image_key == "saxs"


@pytest.mark.parametrize("bad, needle", [
    ({"detector": {"prefix": "X:", "wrong": 1}}, "unknown key"),
    ({"changer": {}}, "missing required key"),
    ({"device_api": "tango"}, "device_api"),
])
def test_bad_configuration_is_a_clear_error(tmp_path, bad, needle):
    import yaml

    from pbi_bluesky.config import ConfigError, load_config

    data = yaml.safe_load(EXAMPLE.read_text())
    data.update(bad)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=needle):
        load_config(path)


def test_secrets_never_reach_the_configuration_or_its_log(monkeypatch):
    from pbi_bluesky.config import load_config

    monkeypatch.setenv("TILED_API_KEY", "s3cret-k3y")
    cfg = load_config(EXAMPLE)
    assert cfg.tiled.api_key == "s3cret-k3y"
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.public())


def test_missing_iocs_are_named(sim_config):
    from pbi_bluesky.devices import BeamlineConnectionError, make_ophyd_beamline

    cfg = sim_config.with_overrides(detector={"prefix": "NOPE:"}, connection_timeout_s=1.0)
    with pytest.raises(BeamlineConnectionError, match="NOPE:"):
        make_ophyd_beamline(cfg)


def test_stock_ophyd_devices_measure_a_slot_over_channel_access(beamline, sim_ioc):
    import numpy as np
    from area_detector_handlers.handlers import AreaDetectorHDF5Handler
    from bluesky import RunEngine

    from pbi_bluesky.plans import measure_tray, use_tray

    use_tray(beamline.config.tray)  # the sample list: what a user knows of the tray
    docs = []
    RE = RunEngine({})
    try:
        RE(measure_tray(beamline.readables, beamline.changer, [5], 0.1),
           lambda n, d: docs.append((n, d)))
    finally:
        use_tray(None)
    names = [n for n, _ in docs]
    assert names.count("resource") == 1 and names.count("datum") == 1
    resource = next(d for n, d in docs if n == "resource")
    assert resource["spec"] == "AD_HDF5"
    event = next(d for n, d in docs if n == "event")
    assert {"saxs_image", "i0", "transmission", "changer"} <= set(event["data"])
    assert event["data"]["i0"] > 0 and 0 < event["data"]["transmission"] <= 1
    start = docs[0][1]
    assert (start["slot"], start["sample"], start["composition"]) == (5, "N25-dev", "25:75")
    handler = AreaDetectorHDF5Handler(f"{resource['root']}/{resource['resource_path']}",
                                      **resource["resource_kwargs"])
    frame = np.asarray(handler(0))[0]
    handler.close()
    assert frame.shape == (619, 487) and frame.max() > 0
    assert beamline.changer.position == pytest.approx(5)


def test_a_hung_detector_fails_the_trigger_instead_of_the_scan(beamline, sim_ioc):
    from pbi_bluesky.devices import DetectorTimeoutError

    det = beamline.detector
    det.timeout_margin = 1.0
    det.cam.acquire_time.put(0.05)
    ca_put(f"{sim_ioc.prefix}sim:DetectorTimeout", 1)
    try:
        det.stage()
        status = det.trigger()
        with pytest.raises(DetectorTimeoutError, match="did not finish"):
            status.wait(15)
    finally:
        ca_put(f"{sim_ioc.prefix}sim:DetectorTimeout", 0)
        det.unstage()
        det.timeout_margin = 3.0
