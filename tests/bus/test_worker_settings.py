"""``pbi worker`` takes the beamline's file plus what is per worker; the old options still
work, hidden, each saying which key of the file holds it now."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pbi_bluesky.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SIM = ROOT / "profiles" / "profile_saxs" / "beamline.yaml"


@pytest.fixture(scope="module")
def settings(bus_files, bus_instrument, redis_server, tiled_server):
    """The tiny detector's beamline: its keys, geometry, model, the test broker and Tiled."""
    return load_config(SIM).with_overrides(
        name="settings-bl", detector={"name": "det"},
        monitors={"i0_name": "beam_i0", "transmission_name": "beam_transmission"},
        geometry={"poni": str(bus_files["poni"]), "mask": str(bus_files["mask"]),
                  "dark": str(bus_files["dark"])},
        scorer={"model": str(bus_files["model"]), "npt": bus_instrument.npt,
                "data_roots": [str(bus_files["data"])], "batch_size": 4},
        tiled={"uri": tiled_server.uri, "api_key_env": "PBI_SETTINGS_TEST_KEY"},
        bus={"url": redis_server.url, "lease_s": 2.0, "claim_idle_s": 1.5,
             "tiled_batch": 8})


def test_pbi_worker_options_are_the_file_and_what_is_per_worker():
    from typer.testing import CliRunner

    from pbi_bluesky.cli import app

    result = CliRunner().invoke(app, ["bus", "worker", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    shown = {w.strip("│ ") for w in result.output.split() if w.startswith("--")}
    assert shown == {"--config", "--role", "--name", "--broker", "--threads", "--help"}


def test_old_options_land_on_the_keys_of_the_file(settings):
    from pbi_bluesky.cli.worker import deprecated_flags

    cfg, scorer, notes = deprecated_flags(settings, {
        "model": Path("/models/m"), "npt": 32, "lease": 7.0, "data_root": [Path("/more")],
        "beamline": "other", "monitor_key": "I0", "no_transmission": True, "tiled": None,
        "no_score": False})
    assert cfg.scorer.model == "/models/m" and cfg.scorer.npt == 32
    assert cfg.bus.lease_s == 7.0 and cfg.name == "other"
    assert cfg.scorer.data_roots == (*settings.scorer.data_roots, "/more")
    assert scorer == {"monitor_key": "I0", "transmission_required": False}
    assert len(notes) == 7
    assert "pbi worker: --lease is deprecated: set bus.lease_s in beamline.yaml" in notes
    with pytest.raises(ValueError, match="bus.lease_s"):
        deprecated_flags(settings, {"lease": -1.0})


def test_a_worker_is_built_from_the_settings(settings, bus_files):
    from pbi_bluesky.bus.worker import BusWorker

    worker = BusWorker.from_settings(settings, role="score", name="s1")
    assert worker.names.frames == "settings-bl.pbi.frames" and worker.url == settings.bus.url
    assert worker.batch_size == 4 and worker.claim_idle_ms == 1500 and worker.score
    assert worker.lease is None and worker.core.npt == settings.scorer.npt
    assert worker.core.model_info["path"] == str(Path(bus_files["model"]).resolve())
    coordinator = BusWorker.from_settings(settings, role="coordinate", url="redis://x:1/0")
    assert coordinator.url == "redis://x:1/0" and not coordinator.score
    assert coordinator.lease is not None and coordinator.lease.ttl_ms == 2000
    with pytest.raises(ValueError, match="no broker"):
        BusWorker.from_settings(settings.with_overrides(bus={"url": None}), role="score")


def test_a_worker_started_with_the_file_scores_a_run(settings, tiled_server, bus_instrument,
                                                     bus_files, tmp_path):
    """``pbi worker --config FILE --name N``: broker, model, geometry, Tiled and the bus
    settings all come from the file (the Tiled key from the variable it names)."""
    from pbi_bluesky.bus import BusPublisher
    from pbi_bluesky.store import Catalog
    from tests.bus.runs import frame_table, sample_md, shots, wait_for_analysis
    from tests.live.docs import feed, run_docs

    path = settings.to_yaml(tmp_path / "beamline.yaml")
    log = tmp_path / "worker.log"
    env = {**os.environ, "PBI_SETTINGS_TEST_KEY": tiled_server.api_key,
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PBI_BEAMLINE_CONFIG", None)
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "pbi_bluesky.cli", "bus", "worker",
                                 "--config", str(path), "--name", "from-file"],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    publisher = BusPublisher(settings.bus.url, settings.name, outbox_dir=tmp_path / "outbox")
    try:
        uid, docs = run_docs(sample_md(bus_files["poni_text"], sample="from-file"),
                             shots(bus_instrument, np.random.default_rng(4), 6))
        feed(publisher, docs)
        assert publisher.flush(30)
        runs = Catalog(tiled_server.uri, api_key=tiled_server.api_key).runs
        (analysis,) = wait_for_analysis(runs, uid, 120, diagnose=lambda: log.read_text())
        rows = frame_table(analysis)
        assert sorted(rows) == [1, 2, 3, 4, 5, 6]
        assert {r["status"] for r in rows.values()} == {"scored"}
        assert any(r["is_anomaly"] for r in rows.values())
        assert analysis.metadata["start"]["model_sha256"] == \
            load_model_sha(bus_files["model"])
    finally:
        publisher.close(10)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "worker from-file scoring settings-bl.bluesky.runengine.documents" in text
    assert "deprecated" not in text and tiled_server.api_key not in text


def load_model_sha(model_dir) -> str:
    from pbi_bluesky.models.bundle import sha256_file

    return sha256_file(Path(model_dir) / "model.json")


def test_a_worker_without_its_file_or_broker_is_refused_up_front(tmp_path):
    from typer.testing import CliRunner

    from pbi_bluesky.cli import app

    unset = {"PBI_BEAMLINE_CONFIG": None}
    result = CliRunner().invoke(app, ["bus", "worker", "--beamline", "b", "--lease", "3"],
                                env=unset)
    assert result.exit_code == 2
    assert "give the beamline's file (--config or PBI_BEAMLINE_CONFIG" in result.output
    result = CliRunner().invoke(app, ["bus", "worker", "--config", str(tmp_path / "none.yaml")],
                                env=unset)
    assert result.exit_code == 2 and "beamline configuration not found" in result.output
