"""`flagged_runs(decision=...)` / `pbi flagged --decision`: decision records (written by the
agent or the in-plan survey) select flagged raw runs; analysis_of ignores them."""

from __future__ import annotations

import json

import pytest
from event_model import compose_run
from typer.testing import CliRunner

from pbi_bluesky.cli import app
from pbi_bluesky.store import analysis_of, embedded_client, flagged_runs, runs_container
from pbi_bluesky.store.queries import decisions_of


def _write(runs, metadata, stop_extra=None):
    from bluesky_tiled_plugins import TiledWriter

    bundle = compose_run(metadata=metadata)
    writer = TiledWriter(runs)
    writer("start", bundle.start_doc)
    writer("stop", {**bundle.compose_stop(), **(stop_extra or {})})
    return bundle.start_doc["uid"]


@pytest.fixture()
def catalog(tmp_path):
    runs = runs_container(embedded_client(tmp_path))
    summary = {"flagged": 1, "max_score": 9.0, "verdict": "anomalous", "frames": 1}
    for raw in ("raw-defect", "raw-glitch", "raw-open"):
        _write(runs, {"pbi_analysis": True, "raw_uid": raw, "sample": raw, "slot": 1},
               {"pbi_summary": summary})
    _write(runs, {"purpose": "pbi_decision", "raw_uid": "raw-defect",
                  "classification": "confirmed", "raw_uids": ["raw-defect", "r2"]})
    _write(runs, {"purpose": "pbi_decision", "raw_uid": "raw-glitch",
                  "classification": "transient"})
    return runs, tmp_path


def test_decision_filter_and_fields(catalog):
    runs, _ = catalog
    assert [r["raw_uid"] for r in flagged_runs(runs, decision="confirmed")] == ["raw-defect"]
    assert [r["raw_uid"] for r in flagged_runs(runs, decision="transient")] == ["raw-glitch"]
    assert flagged_runs(runs, decision="no verdict") == []
    rows = {r["raw_uid"]: r for r in flagged_runs(runs)}
    assert rows["raw-open"]["decision"] is None and rows["raw-defect"]["decision_uid"]
    assert decisions_of(runs)["raw-defect"]["raw_uids"] == ["raw-defect", "r2"]
    # a decision record carries raw_uid too, but it is not an analysis
    assert analysis_of(runs, "raw-defect").metadata["start"]["pbi_analysis"] is True
    with pytest.raises(ValueError, match="decision must be one of"):
        flagged_runs(runs, decision="maybe")


def test_cli_decision_option(catalog):
    _, folder = catalog
    runner = CliRunner()
    result = runner.invoke(app, ["catalog", "flagged", "--data-dir", str(folder), "--decision",
                                 "confirmed", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["raw_uid"] for r in json.loads(result.output)] == ["raw-defect"]
    text = runner.invoke(app, ["catalog", "flagged", "--data-dir", str(folder)])
    assert "decision=transient" in text.output and "3 flagged run(s)" in text.output
    bad = runner.invoke(app, ["catalog", "flagged", "--data-dir", str(folder),
                               "--decision", "maybe"])
    assert bad.exit_code == 2 and "confirmed" in bad.output
