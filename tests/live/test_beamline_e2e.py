"""End to end over Channel Access: RunEngine + ophyd + sim IOC + live scorer + Tiled.

The session IOC serves a Pilatus 300K at 3 m; the model here is trained (in seconds) on
simulated profiles of that same instrument, so its q grid fits the detector.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.beamline_fixtures import beamline, sim_ioc  # noqa: F401

EXPOSURE = 0.1


@pytest.fixture(scope="module")
def instrument_300k(beamline):  # noqa: F811
    from pbi_bluesky.reduction import load_geometry_text
    from pbi_bluesky.simulate import Instrument

    poni = beamline.detector.cam.poni.get()
    return Instrument(geometry=load_geometry_text(poni), npt=200,
                      q_range_inv_angstrom=(0.007, 0.085))


@pytest.fixture(scope="module")
def model_300k(instrument_300k):
    from pbi_bluesky.models import AnomalyDetector, NetworkConfig, QGrid, TrainingConfig
    from pbi_bluesky.simulate import PS_PMMA, nominal_state, simulate_profile

    rng = np.random.default_rng(300)
    profiles, recipes = [], []
    for recipe in PS_PMMA.recipes:
        for _ in range(60):
            state = nominal_state(PS_PMMA, recipe, rng)
            profiles.append(simulate_profile(state, instrument_300k, rng,
                                             exposure_s=EXPOSURE))
            recipes.append(recipe)
    grid = QGrid(q_min=0.008, q_max=0.08, npt=128)
    detector = AnomalyDetector(grid, NetworkConfig(length=128),
                               TrainingConfig(epochs=12, alpha=0.02, seed=1))
    return detector.fit(profiles, recipes, progress=False)


def _scorer(model, instrument, sinks=()):
    from pbi_bluesky.live import LiveScorer
    from pbi_bluesky.simulate import expected_dark

    return LiveScorer(model, sinks=list(sinks), mask=instrument.mask,
                      dark=expected_dark(instrument, EXPOSURE))


def _writers(runs, spool):
    from bluesky_tiled_plugins import TiledWriter

    from pbi_bluesky.store import SpoolSink

    def delete_partial(uid):
        if uid in runs:
            runs[uid].delete(recursive=True, external_only=False)

    raw = SpoolSink(spool / "raw", lambda: TiledWriter(runs), delete_partial=delete_partial)
    analysis = SpoolSink(spool / "analysis", lambda: TiledWriter(runs),
                         delete_partial=delete_partial)
    return raw, analysis


def test_survey_flags_defect_tells_transient_and_lands_in_tiled(
    beamline, model_300k, instrument_300k, tmp_path  # noqa: F811
):
    from bluesky import RunEngine

    from pbi_bluesky.plans import survey_and_rescan
    from pbi_bluesky.store import embedded_client, flagged_runs, runs_container

    runs = runs_container(embedded_client(tmp_path / "tiled"))
    raw, analysis = _writers(runs, tmp_path / "spool")
    scorer = _scorer(model_300k, instrument_300k, [analysis])
    RE = RunEngine({})
    RE.subscribe(raw)
    RE.subscribe(scorer)
    outcomes = []

    def plan():
        result = yield from survey_and_rescan(
            beamline.detector, beamline.changer, [6, 7, 8], EXPOSURE,
            channel=scorer.channel, verdict_timeout=60,
            reference_slots=[{"slot": 0, "sample_type": "empty_cell"}])
        outcomes.extend(result)

    RE(plan())
    assert scorer.flush(60)
    by_slot = {o.slot: o for o in outcomes}
    assert by_slot[6].classification == "normal", by_slot[6]
    assert by_slot[7].classification == "transient", by_slot[7]  # beam dump, first shot only
    assert by_slot[8].classification == "confirmed", by_slot[8]  # degraded material
    for summary in scorer.channel.summaries.values():
        assert summary["frames"] == summary["accounted"] == summary["scored"]
    assert raw.pending() == [] and analysis.pending() == []
    flagged = {r["raw_uid"] for r in flagged_runs(runs)}
    assert by_slot[8].raw_uid in flagged and by_slot[7].raw_uid in flagged
    assert by_slot[6].raw_uid not in flagged
    start = runs[by_slot[8].raw_uid].metadata["start"]
    assert start["composition"] == "50:50" and start["slot"] == 8
    assert "Distance" in start["geometry"]
    rescans = [r for r in by_slot[8].rescans if r["raw_uid"]]
    assert runs[rescans[0]["raw_uid"]].metadata["start"]["rescan_of"] == by_slot[8].raw_uid
    frame = runs[by_slot[6].raw_uid]["primary"]["saxs_image"].read()
    assert frame.dtype == np.int32 and frame.shape[-2:] == (619, 487)


def test_bad_metadata_and_a_raising_model_never_abort_the_scan(
    beamline, model_300k, instrument_300k  # noqa: F811
):
    from bluesky import RunEngine

    from pbi_bluesky.plans import measure_tray

    scorer = _scorer(model_300k, instrument_300k)
    RE = RunEngine({})
    RE.subscribe(scorer)
    uids = RE(measure_tray(beamline.detector, beamline.changer, [6], EXPOSURE,
                           md={"composition": "33:67"}))
    assert scorer.flush(60)
    (uid,) = [u for u in uids if isinstance(u, str)] or [uids.run_start_uids[0]]
    (result,) = scorer.channel.results(uid)
    assert result.status == "failed" and "unknown to the model" in result.reason

    broken = _scorer(model_300k, instrument_300k)

    def explode(*args, **kwargs):
        raise RuntimeError("model exploded")

    broken.model = type("Broken", (), {"score": explode, "recipes": model_300k.recipes,
                                       "grid": model_300k.grid, "alpha": 0.05,
                                       "threshold": 1.0})()
    RE2 = RunEngine({})
    RE2.subscribe(broken)
    RE2(measure_tray(beamline.detector, beamline.changer, [6, 6], EXPOSURE))
    assert broken.flush(60)
    results = [r for s in broken.channel._results.values() for r in s]
    assert len(results) == 2
    assert all(r.status == "failed" and "model exploded" in r.reason for r in results)


def test_tiled_down_mid_scan_then_back_loses_nothing(
    beamline, model_300k, instrument_300k, tmp_path  # noqa: F811
):
    from bluesky import RunEngine
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    from pbi_bluesky.plans import measure_tray
    from pbi_bluesky.store import flagged_runs, runs_container

    server = SimpleTiledServer(directory=tmp_path / "server", api_key="secret")
    port = int(server.uri.split(":")[2].split("/")[0])
    try:
        runs = runs_container(from_uri(server.uri))
        raw, analysis = _writers(runs, tmp_path / "spool")
        scorer = _scorer(model_300k, instrument_300k, [analysis])
        RE = RunEngine({})
        RE.subscribe(raw)
        RE.subscribe(scorer)
        first = RE(measure_tray(beamline.detector, beamline.changer, [8], EXPOSURE))
        assert scorer.flush(60)
        server.close()  # Tiled goes away mid-session
        second = RE(measure_tray(beamline.detector, beamline.changer, [8, 6], EXPOSURE))
        assert scorer.flush(60)
        assert len(raw.pending()) == 2  # the scan went on; runs wait in the spool
        server = SimpleTiledServer(directory=tmp_path / "server", api_key="secret",
                                   port=port)
        assert set(raw.replay().values()) == {"written"}
        assert set(analysis.replay().values()) == {"written"}
        uids = [u for u in (*first, *second)]
        assert all(u in runs for u in uids)
        assert len([r for r in flagged_runs(runs) if r["slot"] == 8]) == 2
    finally:
        server.close()


def test_hdf5_mode_frames_are_read_from_the_files(
    sim_ioc, model_300k, instrument_300k, tmp_path  # noqa: F811
):
    """Events carry datum ids; the scorer reads /entry/data/data from the IOC's HDF5 files."""
    from bluesky import RunEngine

    from pbi_bluesky.devices import connect_beamline
    from pbi_bluesky.plans import measure_tray

    line = connect_beamline(sim_ioc.prefix, timeout=10, hdf5_path=str(tmp_path))
    scorer = _scorer(model_300k, instrument_300k)
    RE = RunEngine({})
    RE.subscribe(scorer)
    docs = []
    RE.subscribe(lambda name, doc: docs.append(name))
    uids = RE(measure_tray(line.detector, line.changer, [6, 8], EXPOSURE))
    assert scorer.flush(60)
    assert "resource" in docs and "datum" in docs
    results = [scorer.channel.results(u)[0] for u in uids]
    assert [r.status for r in results] == ["scored", "scored"], [r.reason for r in results]
    assert not results[0].is_anomaly and results[1].is_anomaly  # normal 25:75, degraded 50:50
