"""measure_tray: dry runs against ophyd.sim and real runs over Channel Access."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

EXPOSURE = 0.1
SLOTS = [1, 2, 3, 4, 4]  # normal 50:50, contaminated 50:50, PMMA, transient beam dump twice
Q_RANGE = (0.007, 0.08)  # Pilatus 300K at 3 m, outside the beamstop
NPT = 100


# -- dry runs ------------------------------------------------------------------------------
def test_plan_summarizes_and_respects_limits_with_sim_devices(capsys):
    from bluesky.simulators import check_limits, summarize_plan
    from ophyd.sim import det, motor

    from pbi_bluesky.plans import measure_tray

    summarize_plan(measure_tray(det, motor, [1, {"slot": 2, "sample": "x"}], EXPOSURE))
    out = capsys.readouterr().out
    assert out.count("Open Run") == 2 and "motor -> 2" in out
    from bluesky import RunEngine
    from ophyd.sim import SoftPositioner

    RunEngine({})  # check_limits runs in the bluesky event loop, which a RunEngine starts
    slots = SoftPositioner(limits=(1, 5), init_pos=1, name="slots")
    check_limits(measure_tray(det, slots, [1, 5], EXPOSURE))
    with pytest.raises(Exception, match="9"):
        check_limits(measure_tray(det, slots, [1, 9], EXPOSURE))


def test_plan_rejects_bad_arguments():
    from ophyd.sim import det, motor

    from pbi_bluesky.plans import measure_tray

    with pytest.raises(ValueError, match="exposure"):
        list(measure_tray(det, motor, [1], 0))
    with pytest.raises(ValueError, match="no slots"):
        list(measure_tray(det, motor, [], 1.0))
    with pytest.raises(ValueError, match="slot"):
        list(measure_tray(det, motor, ["one"], 1.0))


def test_plan_with_sim_devices_records_caller_metadata():
    from bluesky import RunEngine
    from ophyd.sim import det, motor

    from pbi_bluesky.plans import measure_tray

    RE = RunEngine({})
    starts = []
    RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
    uids = RE(measure_tray(det, motor, [{"slot": 3, "sample": "s3", "composition": "25:75",
                                         "thickness_cm": 0.2}], 0.5, md={"proposal": "p1"}))
    assert len(uids) == 1 and uids[0] == starts[0]["uid"]
    s = starts[0]
    assert (s["sample"], s["slot"], s["composition"], s["thickness_cm"]) == ("s3", 3, "25:75",
                                                                             0.2)
    assert s["exposure_s"] == 0.5 and "geometry" not in s and s["proposal"] == "p1"
    assert motor.position == 3


def test_normals_are_measured_one_run_per_recipe_with_sim_devices():
    """measure_normals (what both demos' loops queue): a run per recipe, a frame per
    specimen, the changer moving between frames; one thickness per run, else refused."""
    from bluesky import RunEngine
    from ophyd.sim import det, motor

    from pbi_bluesky.plans import TrayError, measure_normals

    RE = RunEngine({})
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    slots = [{"slot": 1, "sample": "a", "composition": "50:50", "thickness_cm": 0.1},
             {"slot": 2, "sample": "b", "composition": "25:75", "thickness_cm": 0.2},
             {"slot": 3, "sample": "c", "composition": "50:50", "thickness_cm": 0.1}]
    uids = RE(measure_normals(det, motor, slots, 0.5, md={"operator": "me"}))
    starts = [d for n, d in docs if n == "start"]
    assert list(uids) == [s["uid"] for s in starts]
    assert [(s["sample"], s["composition"], s["slots"], s["specimens"], s["thickness_cm"],
             s["purpose"], s["operator"]) for s in starts] == [
        ("normals 50:50", "50:50", [1, 3], ["a", "c"], 0.1, "normals", "me"),
        ("normals 25:75", "25:75", [2], ["b"], 0.2, "normals", "me")]
    events = [d for n, d in docs if n == "event"]
    assert [e["data"]["motor"] for e in events] == [1, 3, 2]
    with pytest.raises(TrayError, match="thicknesses"):
        RE(measure_normals(det, motor, [{**slots[0]}, {**slots[2], "thickness_cm": 0.2}], 0.5))
    with pytest.raises(TrayError, match="composition"):
        list(measure_normals(det, motor, [{"slot": 4, "sample": "d"}], 0.5))


# -- real runs over Channel Access -----------------------------------------------------------
@pytest.fixture(scope="module")
def tray_runs(beamline, sim_ioc):
    """Run measure_tray over CA once with the stock devices; frames read from HDF5, reduced."""
    from bluesky import RunEngine

    from pbi_bluesky.plans import measure_tray, use_tray
    from pbi_bluesky.reduction import Reducer, absolute_monitor, read_hdf5_frame
    from pbi_bluesky.session import beamline_metadata

    use_tray(beamline.config.tray)
    RE = RunEngine({})
    RE.md.update(beamline_metadata(beamline.config))
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    uids = RE(measure_tray(beamline.readables, beamline.changer, SLOTS, EXPOSURE,
                           md={"operator": "pytest"}))
    runs: dict[str, dict] = defaultdict(lambda: {"events": [], "resources": {}, "datums": {}})
    descriptor_run: dict[str, str] = {}
    for name, doc in docs:
        if name == "start":
            runs[doc["uid"]]["start"] = doc
        elif name == "descriptor":
            runs[doc["run_start"]]["descriptor"] = doc
            descriptor_run[doc["uid"]] = doc["run_start"]
        elif name == "event":
            runs[descriptor_run[doc["descriptor"]]]["events"].append(doc)
        elif name == "resource":
            runs[doc["run_start"]]["resources"][doc["uid"]] = doc
        elif name == "datum":
            for run in runs.values():
                if doc["resource"] in run["resources"]:
                    run["datums"][doc["datum_id"]] = doc
        elif name == "stop":
            runs[doc["run_start"]]["stop"] = doc
    reducer = Reducer(sim_ioc.poni_path, npt=NPT, q_range_inv_angstrom=Q_RANGE,
                      mask=sim_ioc.mask_path)
    profiles = []
    for uid in uids:
        run = runs[uid]
        data = run["events"][0]["data"]
        datum = run["datums"][data["saxs_image"]]
        resource = run["resources"][datum["resource"]]
        frame = read_hdf5_frame(f"{resource['root']}/{resource['resource_path']}",
                                index=datum["datum_kwargs"]["point_number"])
        run["frame"] = frame
        profiles.append(reducer.reduce(
            frame, monitor=absolute_monitor(data["i0"], reducer.ai),
            transmission=data["transmission"], thickness_cm=run["start"]["thickness_cm"],
        ))
    yield {"uids": uids, "runs": runs, "profiles": profiles}
    use_tray(None)


def test_one_run_per_measurement_with_metadata(tray_runs, sim_ioc):
    uids, runs = tray_runs["uids"], tray_runs["runs"]
    assert len(uids) == len(SLOTS) and len(set(uids)) == len(SLOTS)
    assert set(runs) == set(uids)
    tray = {s.slot: s for s in sim_ioc.tray}
    for index, (uid, slot) in enumerate(zip(uids, SLOTS, strict=True)):
        run = runs[uid]
        start = run["start"]
        assert start["slot"] == slot
        assert start["sample"] == tray[slot].sample
        assert start["composition"] == tray[slot].composition
        assert start["thickness_cm"] == pytest.approx(tray[slot].thickness_cm)
        assert start["exposure_s"] == EXPOSURE
        assert "Detector: Pilatus300k" in start["geometry"]
        assert start["plan_name"] == "measure_tray"
        assert start["operator"] == "pytest"
        assert start["tray_index"] == index
        assert "kind" not in start and "severity" not in start, "the truth must stay hidden"
        assert run["stop"]["exit_status"] == "success"
        assert len(run["events"]) == 1
        event = run["events"][0]
        assert event["data"]["changer"] == pytest.approx(slot)
        assert run["frame"].shape == (619, 487)
        assert run["descriptor"]["data_keys"]["saxs_image"]["external"] == "FILESTORE:"
        config = run["descriptor"]["configuration"]["saxs"]["data"]
        assert config["saxs_cam_acquire_time"] == pytest.approx(EXPOSURE)


def _peak_ratio(intensity: np.ndarray) -> tuple[int, float]:
    i = int(np.nanargmax(intensity[:60]))
    return i, float(intensity[i] / intensity[0])


def test_normal_blend_has_correlation_peak_and_pure_polymer_not(tray_runs):
    normal, pmma = tray_runs["profiles"][0], tray_runs["profiles"][2]
    index, ratio = _peak_ratio(normal.intensity)
    assert index >= 3 and ratio > 1.3, (index, ratio)
    q_peak = normal.q_inv_angstrom[index]
    assert 0.012 < q_peak < 0.03
    _, pmma_ratio = _peak_ratio(pmma.intensity)
    assert pmma_ratio < 1.1
    assert np.nanmean(normal.intensity[:40]) > 20 * np.nanmean(pmma.intensity[:40])


def test_contamination_has_stronger_low_q_upturn(tray_runs):
    normal, dirty = tray_runs["profiles"][0], tray_runs["profiles"][1]
    ratio = dirty.intensity / normal.intensity
    low, mid = np.nanmean(ratio[:4]), np.nanmean(ratio[30:70])
    assert low > 1.5 * mid, (low, mid)
    assert 0.7 < mid < 1.4, "away from low q both are the same recipe"


def test_transient_beam_dump_hits_only_the_first_exposure(tray_runs):
    runs, uids = tray_runs["runs"], tray_runs["uids"]
    first, second = tray_runs["profiles"][3], tray_runs["profiles"][4]
    normal = tray_runs["profiles"][0]
    drop = np.nanmean(first.intensity[10:60] / second.intensity[10:60])
    assert drop < 0.6, drop
    recovered = np.nanmean(second.intensity[10:60] / normal.intensity[10:60])
    assert 0.7 < recovered < 1.4
    i0 = [runs[u]["events"][0]["data"]["i0"] for u in uids[3:5]]
    assert i0[0] == pytest.approx(i0[1], rel=0.02), "I0 is read before the dump"


def test_rescan_records_what_it_rechecks_and_the_tray_fills_in_the_sample():
    from bluesky import RunEngine
    from ophyd.sim import det, motor

    from pbi_bluesky.plans import TrayError, measure_tray, rescan, use_tray

    use_tray([{"slot": 3, "sample": "s3", "composition": "25:75", "thickness_cm": 0.2}])
    try:
        RE = RunEngine({})
        starts = []
        RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
        RE(rescan([det], motor, 3, 1.0, rescan_of="raw-1", rescan_round=2))
        s = starts[0]
        assert (s["sample"], s["composition"], s["rescan_of"], s["rescan_round"],
                s["purpose"], s["plan_name"]) == ("s3", "25:75", "raw-1", 2, "rescan", "rescan")
        with pytest.raises(TrayError, match="slot 9 is not in the session's sample list"):
            list(measure_tray(det, motor, [9], 1.0))
    finally:
        use_tray(None)
