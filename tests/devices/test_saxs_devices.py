"""ophyd devices against the simulated beamline IOC over Channel Access."""

from __future__ import annotations

import numpy as np
import pytest

from tests.beamline_fixtures import beamline, ca_get, ca_put, sim_ioc  # noqa: F401

EXPOSURE = 0.05
SHAPE = (619, 487)  # Pilatus 300K rows, columns
HOT = 200_000  # the simulator's hot pixels count at least this much


@pytest.fixture()
def detector_at_slot5(beamline):  # noqa: F811
    """The session detector with the changer at slot 5 (the device-test specimen)."""
    beamline.changer.move(5, wait=True, timeout=20)
    beamline.detector.cam.acquire_time.set(EXPOSURE).wait(5)
    return beamline.detector


def _frame(detector):
    detector.trigger().wait(timeout=10)
    return detector.read()


def test_connect_describe_and_configuration(beamline):  # noqa: F811
    det = beamline.detector
    desc = det.describe()
    assert desc["saxs_image"]["shape"] == list(SHAPE)
    assert desc["saxs_image"]["dtype_numpy"] == "<i4"
    assert desc["saxs_image"]["dtype"] == "array"
    assert set(desc) == {"saxs_image", "saxs_i0", "saxs_transmission"}
    config = det.read_configuration()
    poni = config["saxs_cam_poni"]["value"]
    assert "Detector: Pilatus300k" in poni and "Distance: 3.0" in poni
    assert "saxs_cam_acquire_time" in config
    assert set(det.describe_configuration()) == set(config)
    assert beamline.changer.limits == (0.0, 8.0)
    assert beamline.beam.flux.get() == pytest.approx(1e12)


def test_trigger_and_read_a_frame(detector_at_slot5):
    det = detector_at_slot5
    counter = int(det.cam.array_counter.get(use_monitor=False))
    reading = _frame(det)
    image = reading["saxs_image"]["value"]
    assert image.shape == SHAPE and image.dtype == np.int32
    assert (image == -1).any(), "module gaps should be -1 as a Pilatus writes them"
    assert 0 < image.max() < HOT
    assert reading["saxs_i0"]["value"] == pytest.approx(1e12 * EXPOSURE, rel=0.02)
    assert 0.3 < reading["saxs_transmission"]["value"] < 1.0
    assert int(det.cam.array_counter.get(use_monitor=False)) == counter + 1
    assert int(det.cam.acquire.get()) == 0
    second = _frame(det)["saxs_image"]["value"]
    assert not np.array_equal(image, second), "every frame has its own Poisson noise"


def test_hot_pixel_fault_shows_in_frame(detector_at_slot5, sim_ioc):  # noqa: F811
    det = detector_at_slot5
    clean = _frame(det)["saxs_image"]["value"]
    assert (clean >= HOT).sum() == 0
    ca_put(f"{sim_ioc.prefix}fault:HotPixels", 1.0)
    try:
        hot = _frame(det)["saxs_image"]["value"]
    finally:
        ca_put(f"{sim_ioc.prefix}fault:HotPixels", 0.0)
    assert (hot >= HOT).sum() >= 50
    after = _frame(det)["saxs_image"]["value"]
    assert (after >= HOT).sum() == 0, "the fault must switch off again"


def test_changer_moves_and_describes_slots(beamline):  # noqa: F811
    ch = beamline.changer
    ch.move(2, wait=True, timeout=20)
    assert ch.position == pytest.approx(2.0)
    assert int(ch.done.get()) == 1
    ch.move(2, wait=True, timeout=20)  # a null move must complete too
    info = ch.slot_info(2).read()
    assert info["changer_slot2_sample"]["value"] == "C50-a"
    assert info["changer_slot2_composition"]["value"] == "50:50"
    assert info["changer_slot2_thickness_cm"]["value"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="outside"):
        ch.move(9, wait=True, timeout=5)
    from pbi_bluesky.devices import BeamlineConnectionError

    with pytest.raises(BeamlineConnectionError, match="slot 42"):
        ch.slot_info(42, timeout=0.5)


@pytest.mark.timeout(60)
def test_detector_timeout_fault_fails_trigger(sim_ioc):  # noqa: F811
    from pbi_bluesky.devices import DetectorTimeoutError, SAXSDetector

    det = SAXSDetector(sim_ioc.prefix, name="slow", timeout_margin=1.0)
    det.wait_for_connection(timeout=10)
    det.cam.acquire_time.set(EXPOSURE).wait(5)
    ca_put(f"{sim_ioc.prefix}fault:DetectorTimeout", 1)
    try:
        status = det.trigger()
        with pytest.raises(DetectorTimeoutError, match="did not complete within"):
            status.wait(timeout=20)
        assert status.done and not status.success
    finally:
        ca_put(f"{sim_ioc.prefix}fault:DetectorTimeout", 0)
    # the timed-out acquisition was aborted, so the detector works again
    det.trigger().wait(timeout=10)
    assert int(ca_get(f"{sim_ioc.prefix}cam1:Acquire")) == 0


@pytest.mark.timeout(30)
def test_missing_prefix_fails_fast_with_clear_message(sim_ioc):  # noqa: F811
    from pbi_bluesky.devices import BeamlineConnectionError, connect_beamline

    with pytest.raises(BeamlineConnectionError, match="'NOSUCHBEAMLINE:'.*did not answer"):
        connect_beamline("NOSUCHBEAMLINE:", timeout=1.0)


def test_hdf5_mode_emits_resource_and_datum_that_fill(sim_ioc, tmp_path):  # noqa: F811
    import bluesky.plans as bp
    import event_model
    from bluesky import RunEngine

    from pbi_bluesky.devices import HANDLER_REGISTRY, connect_beamline

    bl = connect_beamline(sim_ioc.prefix, timeout=10, hdf5_path=str(tmp_path))
    det = bl.detector
    bl.changer.move(5, wait=True, timeout=20)
    det.cam.acquire_time.set(EXPOSURE).wait(5)
    RE = RunEngine({})
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(bp.count([det], num=2))
    names = [n for n, _ in docs]
    assert names.count("resource") == 2 and names.count("datum") == 2
    resources = [d for n, d in docs if n == "resource"]
    assert {r["spec"] for r in resources} == {"AD_HDF5"}
    assert all((tmp_path / r["resource_path"]).is_file() for r in resources)
    descriptor = next(d for n, d in docs if n == "descriptor")
    key = descriptor["data_keys"]["saxs_image"]
    assert key["external"] == "FILESTORE:" and key["shape"] == list(SHAPE)
    assert key["dtype_numpy"] == "<i4"
    events = []
    with event_model.Filler(HANDLER_REGISTRY, inplace=False) as filler:
        for name, doc in docs:
            _, filled = filler(name, doc)
            if name == "event":
                events.append(filled)
    assert len(events) == 2
    frames = [np.asarray(e["data"]["saxs_image"]) for e in events]
    assert all(f.shape == SHAPE and f.dtype == np.int32 for f in frames)
    last_inline = det.image.get()
    np.testing.assert_array_equal(frames[-1], last_inline)
    assert not np.array_equal(frames[0], frames[1])
    assert int(det.hdf.enable_callbacks.get()) == 0, "unstage restores the writer setting"
