"""The bus workers take the registry's current model at a run's start and keep it for the
whole run, whichever worker scores its frames (a real Redis and Tiled)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from pbi_bluesky.bus import BusNames, BusPublisher, connect
from tests.bus.runs import frame_table, sample_md, shots, wait_for_analysis
from tests.live.docs import feed, run_docs

BEAMLINE = "reg"


def _variant(src, dst, **changes):
    """A copy of a bundle with model.json settings changed (it still loads)."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / "model.json").read_text())
    doc.update(changes)
    (dst / "model.json").write_text(json.dumps(doc, indent=1))
    return dst


def test_workers_score_a_run_with_the_model_current_at_its_start(
        redis_server, tiled_server, core_kwargs, bus_files, bus_instrument, tmp_path,
        monkeypatch):
    from pbi_bluesky.bus.worker import BusWorker, tiled_writer_factory
    from pbi_bluesky.models import load_bundle
    from pbi_bluesky.models.registry import ModelRegistry
    from pbi_bluesky.scoring.engine import FrameScorer
    from pbi_bluesky.store import Catalog

    monkeypatch.delenv("PBI_MODEL_KEY", raising=False)
    b = _variant(bus_files["model"], tmp_path / "b", alpha=0.2)
    old, new = load_bundle(bus_files["model"]), load_bundle(b)
    assert old.threshold != new.threshold
    reg = ModelRegistry(tmp_path / "registry")
    reg.promote(bus_files["model"])
    catalog = Catalog(tiled_server.uri, api_key=tiled_server.api_key)
    # the coordinator only dispatches and writes; the scorer starts after the promotion
    coordinator = BusWorker(redis_server.url, BEAMLINE,
                            FrameScorer(**core_kwargs, registry=reg.root),
                            writer_factory=tiled_writer_factory(catalog, 8),
                            delete_partial=catalog.delete_partial, name="coord", score=False,
                            lease_s=2.0, claim_idle_s=1.5).start()
    publisher = BusPublisher(redis_server.url, BEAMLINE, outbox_dir=tmp_path / "outbox")
    client, names = connect(redis_server.url), BusNames(BEAMLINE)
    rng = np.random.default_rng(3)
    poni, kinds = bus_files["poni_text"], ("normal",)
    uid1, run1 = run_docs(sample_md(poni, sample="one"), shots(bus_instrument, rng, 5,
                                                                kinds=kinds))
    uid2, run2 = run_docs(sample_md(poni, sample="two"), shots(bus_instrument, rng, 3,
                                                                kinds=kinds))
    scorer = None
    try:
        half = [i for i, (n, _d) in enumerate(run1) if n == "event"][2]
        feed(publisher, run1[:half])
        assert publisher.flush(30)
        deadline = time.monotonic() + 60
        while client.hget(names.run(uid1), "model_version") is None:
            assert time.monotonic() < deadline, "run 1 never dispatched"
            time.sleep(0.1)
        assert client.hget(names.run(uid1), "model_version") == b"1"
        promoted = reg.promote(b)  # mid-run: run 1 keeps version 1
        scorer = BusWorker(redis_server.url, BEAMLINE,
                           FrameScorer(**core_kwargs, registry=reg.root), name="late",
                           claim_idle_s=1.5).start()
        assert scorer.core.model_info["registry_version"] == 2  # its own model is the new one
        feed(publisher, run1[half:] + run2)
        assert publisher.flush(30)
        runs = catalog.runs
        (a1,) = wait_for_analysis(runs, uid1, 120)
        (a2,) = wait_for_analysis(runs, uid2, 120)
    finally:
        publisher.close(10)
        if scorer is not None:
            scorer.stop()
        coordinator.stop()
    assert a1.metadata["start"]["model_registry_version"] == 1
    assert a1.metadata["start"]["model_sha256"] == reg.version(1).model_sha256
    assert a2.metadata["start"]["model_registry_version"] == promoted.number == 2
    assert a2.metadata["start"]["model_sha256"] == promoted.model_sha256
    rows1, rows2 = frame_table(a1), frame_table(a2)
    assert sorted(rows1) == [1, 2, 3, 4, 5] and sorted(rows2) == [1, 2, 3]
    assert scorer.stats["scored"] == 8  # every frame of both runs went through the late one
    assert all(r["threshold"] == pytest.approx(old.threshold) for r in rows1.values())
    assert all(r["threshold"] == pytest.approx(new.threshold) for r in rows2.values())
