"""``pbi model recalibrate``: false-alarm labels in the catalog become calibration normals."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pbi_bluesky.cli.app import app
from pbi_bluesky.models import load_bundle
from pbi_bluesky.store import label_run, open_runs
from tests.review.conftest import RECIPE


def test_false_alarm_labels_make_a_recalibrated_bundle(review_catalog, tmp_path):
    folder, bundle, uids = review_catalog
    original = {p.name: p.read_bytes() for p in bundle.iterdir()}
    runner = CliRunner()
    out = tmp_path / "recalibrated"
    args = ["model", "recalibrate", "--model", str(bundle), "--data-dir", str(folder),
            "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "labelled a false alarm" in result.output
    bad = runner.invoke(app, [*args[:3], str(tmp_path / "nope"), *args[4:]])
    assert bad.exit_code == 2 and "not a model bundle" in bad.output
    runs = open_runs(data_dir=folder)
    for name in ("a", "b"):
        label_run(runs, uids[name], "false-alarm", note="drifted but fine", by="test")
    del runs
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "recalibration.json").read_text())
    row = next(r for r in record["table"] if r["recipe"] == RECIPE)
    assert row["added"] == 4 and row["new_n"] == row["old_n"] + 4  # 2 runs x 2 frames
    assert row["new_threshold"] > row["old_threshold"]
    assert sorted(record["runs"]) == sorted([uids["a"], uids["b"]])
    assert RECIPE in result.output and "->" in result.output
    new = load_bundle(out)
    old = load_bundle(bundle)
    assert new.calibration.scores.size == old.calibration.scores.size + 4
    assert json.loads((out / "model.json").read_text())["recalibration"] == record
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == original
