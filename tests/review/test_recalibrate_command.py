"""``pbi model recalibrate`` and ``pbi model evaluate --labels``: labels in the catalog
correct the model, and confirmed defects are a test set for any candidate."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pbi_bluesky.cli.app import app
from pbi_bluesky.models import load_bundle
from pbi_bluesky.store import label_run, open_runs
from tests.review.conftest import RECIPE


def _evaluate(runner, bundle, folder) -> dict:
    result = runner.invoke(app, ["model", "evaluate", "--labels", "--model", str(bundle),
                                 "--data-dir", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_labels_recalibrate_and_evaluate(review_catalog, tmp_path):
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
    none = runner.invoke(app, ["model", "evaluate", "--labels", "--model", str(bundle),
                               "--data-dir", str(folder)])
    assert none.exit_code == 1 and "no run in the catalog is labelled" in none.output
    # a (faint bump) is a confirmed defect, b (strong bump) a false alarm
    runs = open_runs(data_dir=folder)
    label_run(runs, uids["a"], "defect", by="test")
    label_run(runs, uids["b"], "false-alarm", note="drifted but fine", by="test")
    del runs
    old = _evaluate(runner, bundle, folder)
    assert (old["defects"]["runs"], old["defects"]["recall"]) == (1, 1.0)
    assert (old["false_alarms"]["runs"], old["false_alarms"]["false_alarm_rate"]) == (1, 1.0)
    assert old["per_recipe"][RECIPE]["defects"]["frames"] == 2
    # b's frames as normals raise the threshold past a's scores: refused, a named
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "not written" in refused.output
    assert uids["a"] in refused.output and not out.exists()
    forced = runner.invoke(app, [*args, "--allow-unflagging"])
    assert forced.exit_code == 0 and "warning" in forced.output, forced.output
    row = next(r for r in json.loads((out / "recalibration.json").read_text())["table"]
               if r["recipe"] == RECIPE)
    assert (row["defects"], row["defects_flagged_old"], row["defects_flagged_new"]) == (1, 1, 0)
    assert row["defects_unflagged"] == [uids["a"]]
    new = _evaluate(runner, out, folder)  # the candidate misses the defect: recall 0
    assert new["defects"]["recall"] == 0.0 and new["false_alarms"]["false_alarm_rate"] == 0.0
    text = runner.invoke(app, ["model", "evaluate", "--labels", "--model", str(out),
                               "--data-dir", str(folder)])
    assert text.exit_code == 0 and RECIPE in text.output and "0/1" in text.output
    # both false alarms (a's newer label counts): 2 runs x 2 frames join the normals
    label_run(open_runs(data_dir=folder), uids["a"], "false-alarm", by="test")
    out2 = tmp_path / "recalibrated2"
    result = runner.invoke(app, [*args[:-1], str(out2)])
    assert result.exit_code == 0, result.output
    record = json.loads((out2 / "recalibration.json").read_text())
    row = next(r for r in record["table"] if r["recipe"] == RECIPE)
    assert row["added"] == 4 and row["new_n"] == row["old_n"] + 4
    assert row["new_threshold"] > row["old_threshold"] and row["defects"] == 0
    assert sorted(record["runs"]) == sorted([uids["a"], uids["b"]])
    assert RECIPE in result.output and "->" in result.output
    new = load_bundle(out2)
    old = load_bundle(bundle)
    assert new.calibration.scores.size == old.calibration.scores.size + 4
    assert json.loads((out2 / "model.json").read_text())["recalibration"] == record
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == original
