"""The ``pbi`` command line, run the way a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pbi_bluesky.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["simulate"], ["reduce"], ["demo"]])
def test_help_on_every_command(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "pbi_bluesky.cli", "--help"],
                         capture_output=True, text=True, check=True)
    assert "simulate" in out.stdout and "reduce" in out.stdout


def test_simulate_then_reduce_frames(tmp_path):
    data = tmp_path / "data"
    result = runner.invoke(app, ["simulate", "--out", str(data), "--normals", "1",
                                 "--anomalies", "0", "--frames", "--seed", "3"])
    assert result.exit_code == 0, result.output
    frames = sorted((data / "frames").glob("s*.cbf"))
    assert len(frames) == 5
    out = tmp_path / "reduced"
    result = runner.invoke(app, ["reduce", *map(str, frames[:2]), "--poni",
                                 str(data / "geometry.poni"), "--mask", str(data / "mask.edf"),
                                 "--dark", str(data / "dark.edf"), "--out", str(out),
                                 "--format", "h5"])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.h5"))) == 2


def test_reduce_reports_bad_files_and_keeps_going(tmp_path):
    data = tmp_path / "data"
    runner.invoke(app, ["simulate", "--out", str(data), "--normals", "1", "--anomalies", "0",
                        "--frames", "--seed", "3"])
    empty = tmp_path / "empty.cbf"
    empty.write_bytes(b"")
    good = sorted((data / "frames").glob("s*.cbf"))[0]
    out = tmp_path / "reduced"
    result = runner.invoke(app, ["reduce", str(empty), str(good), "--poni",
                                 str(data / "geometry.poni"), "--out", str(out)])
    assert result.exit_code == 1
    assert "empty" in result.output
    assert len(list(out.glob("*.dat"))) == 1


def test_reduce_with_missing_poni_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["reduce", "x.cbf", "--poni", str(tmp_path / "none.poni"),
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "not found" in result.output


def test_demo_json(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output.strip().splitlines()[-1])
    assert len(rows) == 16
    assert (tmp_path / "demo_curves.png").stat().st_size > 10_000
    normal = [r["chi2_vs_reference"] for r in rows if r["truth"] == "normal"]
    gross = [r["chi2_vs_reference"] for r in rows
             if r["truth"] in ("composition_drift", "mislabelled", "coarsening")]
    assert min(gross) > max(normal)
