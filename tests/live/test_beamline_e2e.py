"""End to end over Channel Access: a session from beamline.yaml (stock ophyd or ophyd-async
devices, RunEngine, live scorer, spools, Tiled) against the sim IOC.

The session IOC serves a Pilatus 300K at 3 m; ``model_300k`` is trained (in seconds) on
simulated profiles of that same instrument, so its q grid fits the detector.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SIM_EXPOSURE_S as EXPOSURE
from tests.queue_fixtures import wait_for

pytestmark = pytest.mark.e2e


def _session(cfg, model, instrument, tmp_path, mode="ophyd", **kwargs):
    from pbi_bluesky.session import build_session
    from pbi_bluesky.simulate import expected_dark

    return build_session(cfg, mode=mode, data_root=tmp_path / "data", plots=False,
                         live_table=False, persistent_md=False,
                         scorer_kwargs={"model": model,
                                        "dark": expected_dark(instrument, EXPOSURE),
                                        **kwargs})


@pytest.mark.parametrize("mode, transient", [("ophyd", 7), ("async", 10)])
def test_survey_flags_defect_tells_transient_and_lands_in_tiled(
    mode, transient, sim_config, model_300k, instrument_300k, tmp_path
):
    from pbi_bluesky.plans import survey_and_rescan, use_tray
    from pbi_bluesky.store import flagged_runs
    from pbi_bluesky.store.curves import analysis_frames

    session = _session(sim_config, model_300k, instrument_300k, tmp_path, mode)
    bl, scorer = session.beamline, session.scorer
    outcomes = []

    def plan():
        result = yield from survey_and_rescan(
            bl.readables, bl.changer, [6, transient, 8], EXPOSURE, channel=scorer.channel,
            verdict_timeout=180, reference_slots=[0])
        outcomes.extend(result)

    try:
        session.RE(plan())
        assert session.close(300)
    finally:
        use_tray(None)
    by_slot = {o.slot: o for o in outcomes}
    reasons = {u: s["failures"] for u, s in scorer.channel.summaries.items() if s["failures"]}
    assert by_slot[6].classification == "normal", (by_slot[6], reasons)
    assert by_slot[transient].classification == "transient", by_slot[transient]  # 1st shot
    assert by_slot[8].classification == "confirmed", by_slot[8]  # degraded material
    # the I(q) of each frame is that slot's sample: the recipe the model recognises
    assert by_slot[6].predicted_composition == "25:75"
    assert by_slot[8].top_attribution  # the attribution arrived before the verdict was read
    for summary in scorer.channel.summaries.values():
        assert summary["frames"] == summary["accounted"] == summary["scored"] == 1
    runs = session.catalog.runs
    flagged = {r["raw_uid"] for r in flagged_runs(runs)}
    assert by_slot[8].raw_uid in flagged and by_slot[transient].raw_uid in flagged
    assert by_slot[6].raw_uid not in flagged
    start = runs[by_slot[8].raw_uid].metadata["start"]
    start_6 = runs[by_slot[6].raw_uid].metadata["start"]
    assert start["composition"] == "50:50" and start["slot"] == 8
    assert "Detector: Pilatus300k" in start["geometry"] and start["geometry_sha256"]
    rescans = [r for r in by_slot[8].rescans if r["raw_uid"]]
    assert runs[rescans[0]["raw_uid"]].metadata["start"]["rescan_of"] == by_slot[8].raw_uid
    analysis = next(r for r in flagged_runs(runs) if r["raw_uid"] == by_slot[8].raw_uid)
    stream = runs[analysis["analysis_uid"]]["pbi_anomaly"]
    events = stream.read()
    # the session writes the curves as columns of the stream's table
    frames = analysis_frames(stream)
    assert frames.layout == "table", frames.layout
    assert events["is_anomaly"][0] and np.isfinite(frames.curves["intensity"][0]).all()
    explained = runs[analysis["analysis_uid"]]["pbi_attribution"].read()
    assert explained["status"][0] == "explained"
    if mode == "ophyd":  # the raw frame, served by Tiled from the detector's HDF5 file
        frame = runs[by_slot[6].raw_uid]["primary"]["saxs_image"].read()
        assert frame.dtype == np.int32 and frame.shape[-2:] == (619, 487)
    # issue 18: the runs these devices wrote (stock ophyd: Resource/Datum; ophyd-async:
    # StreamResource) read back for training as `pbi model train --tiled` does, reduced
    # with the empty cell measured before them
    from pbi_bluesky.training.tiled import collect_normals

    normals = collect_normals(runs, scorer.core.reducing(), query=("purpose=survey",))
    used = {r["uid"]: r for r in normals.used}
    assert normals.cells == [] and by_slot[6].raw_uid in used, normals.summary()
    assert used[by_slot[6].raw_uid] == {"uid": by_slot[6].raw_uid, "sample": start_6["sample"],
                                         "composition": "25:75", "frames": 1}
    assert len(normals.used) == 3 and normals.refused == [], normals.summary()
    assert normals.summary()["per_recipe"] == {"25:75": 1, "50:50": 2}
    # every frame (3 samples and the cell) from its HDF5 file under the data root
    assert normals.reads.as_dict() == {"from_files": 4, "through_tiled": 0, "why_tiled": {}}


def test_bad_metadata_and_a_raising_model_never_abort_the_scan(
    sim_config, model_300k, instrument_300k, tmp_path, monkeypatch
):
    from pbi_bluesky.plans import measure_tray, use_tray

    session = _session(sim_config, model_300k, instrument_300k, tmp_path)
    bl, scorer = session.beamline, session.scorer
    closed = False
    try:
        (uid,) = session.RE(measure_tray(bl.readables, bl.changer,
                                         [{"slot": 6, "composition": "33:67"}], EXPOSURE))
        assert scorer.flush(300)
        (result,) = scorer.channel.results(uid)
        assert result.status == "failed" and "unknown to the model" in result.reason

        def explode(*args, **kwargs):
            raise RuntimeError("model exploded")

        monkeypatch.setattr(scorer.model, "score_arrays", explode)
        uids = session.RE(measure_tray(bl.readables, bl.changer, [6, 6], EXPOSURE))
        assert scorer.flush(300)
        results = [r for u in uids for r in scorer.channel.results(u)]
        assert len(results) == 2
        assert all(r.status == "failed" and "model exploded" in r.reason for r in results), \
            [r.reason for r in results]
        closed = session.close(300)
        assert closed, f"runs left in the spools: {session.raw_spool.pending()} " \
                       f"{session.analysis_spool.pending()}"
    finally:
        monkeypatch.undo()
        if not closed:
            session.close(30)
        use_tray(None)


def test_tiled_down_at_start_and_mid_scan_loses_nothing(
    sim_config, model_300k, instrument_300k, tmp_path
):
    """A real Tiled server: down when the session starts, up, killed mid-session, back.

    On PostgreSQL, as bench_faults.py runs it: on SQLite + DuckDB the two spools' replays
    meeting the fresh server at once locked it up in one clean-clone run of the suite
    ("No active transaction, cannot commit" in DuckDB's pool, then "database is locked"
    for 300 s; duckdb/duckdb#21384, docs/known-gaps.md)."""
    import os

    from pbi_bluesky.plans import measure_tray, use_tray
    from pbi_bluesky.store import flagged_runs
    from pbi_bluesky.testing.services import PostgresServer, TiledServer

    pg = PostgresServer(tmp_path / "pg").start()
    server = TiledServer(tmp_path / "tiled", readable=[sim_config.detector.local_path],
                         database=pg.asyncpg_uri, tables=pg.tables_uri("pbi_tables"))
    # (port chosen, server not started yet)
    os.environ["PBI_TEST_TILED_KEY"] = server.api_key
    cfg = sim_config.with_overrides(tiled={"uri": server.uri,
                                           "api_key_env": "PBI_TEST_TILED_KEY"})
    session = _session(cfg, model_300k, instrument_300k, tmp_path)
    bl, RE = session.beamline, session.RE
    try:
        first = RE(measure_tray(bl.readables, bl.changer, [8], EXPOSURE))  # Tiled not up
        assert session.scorer.flush(300)
        assert session.raw_spool.pending() == list(first)
        server.start()
        second = RE(measure_tray(bl.readables, bl.changer, [6], EXPOSURE))
        assert session.scorer.flush(300)
        # killed between writes: a kill inside an array write leaves zarr files the
        # catalog does not list, and the server refuses that run's replay (docs/known-gaps.md)
        wait_for(lambda: not (session.raw_spool.pending() or session.analysis_spool.pending()),
                 300, "the first runs to reach Tiled")
        server.kill()  # mid-session crash
        third = RE(measure_tray(bl.readables, bl.changer, [8], EXPOSURE))
        assert session.scorer.flush(300)
        server.start()
        assert session.close(300)  # the background replay wrote everything
        runs = session.catalog.runs
        for uid in (*first, *second, *third):
            assert uid in runs
            assert runs[uid].metadata["stop"]["exit_status"] == "success"
        assert len([r for r in flagged_runs(runs) if r["slot"] == 8]) == 2
        uids = [k for k in runs if runs[k].metadata["start"].get("raw_uid") is None]
        assert len(uids) == len(set(uids)) == 3  # no duplicates after the replays
    finally:
        server.stop()
        pg.stop()
        use_tray(None)
        os.environ.pop("PBI_TEST_TILED_KEY", None)
