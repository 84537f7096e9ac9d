"""The model registry (``pbi model list | show | promote | rollback``) and the live scorer
taking a promoted model at the next run start, never mid-run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.bus.runs import sample_md, shots
from tests.live.docs import run_docs


def _variant(src, dst, **changes):
    """A copy of a bundle with model.json settings changed (weights and arrays unchanged,
    so it loads: model.json holds their sha256, not its own)."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / "model.json").read_text())
    doc.update(changes)
    (dst / "model.json").write_text(json.dumps(doc, indent=1))
    return dst


@pytest.fixture()
def bundles(bus_files, tmp_path, monkeypatch):
    monkeypatch.delenv("PBI_MODEL_KEY", raising=False)
    return {"a": bus_files["model"],
            "b": _variant(bus_files["model"], tmp_path / "b", alpha=0.2),
            "mute": _variant(bus_files["model"], tmp_path / "mute", alpha=1e-6)}


def _app():
    from pbi_bluesky.cli import app

    return app


def test_promote_refuses_what_cannot_serve_and_rolls_back(bundles, bus_files, bus_instrument,
                                                         tmp_path):
    from pbi_bluesky.models.registry import ModelRegistry, RegistryError

    reg = tmp_path / "registry"
    run = CliRunner().invoke
    opts = ["--registry", str(reg)]
    out = run(_app(), ["model", "promote", str(bundles["mute"]), *opts])
    assert out.exit_code == 2
    assert "can never flag" in out.output and "the current model stays: the shipped model" \
        in out.output
    assert ModelRegistry(reg).current() is None
    out = run(_app(), ["model", "promote", str(bundles["a"]), *opts,
                       "--poni", str(bus_files["poni"]), "--mask", str(bus_files["mask"]),
                       "--npt", str(bus_instrument.npt)])
    assert out.exit_code == 0, out.output
    assert "promoted v1" in out.output and "inside the beamline's q = 0.01" in out.output
    # a model outside the beamline's q range is refused; v1 stays current
    with pytest.raises(RegistryError, match="this beamline measures q = 0.03"):
        ModelRegistry(reg).promote(bundles["b"], q_range=(0.03, 0.2))
    assert ModelRegistry(reg).current().number == 1
    out = run(_app(), ["model", "promote", str(bundles["b"]), *opts])
    assert out.exit_code == 0 and "promoted v2" in out.output, out.output
    listed = [json.loads(x) for x in run(_app(), ["model", "list", *opts, "--json"]
                                         ).output.splitlines()]
    assert [(r["version"], r["current"], r["alpha"]) for r in listed] == [
        (1, False, 0.05), (2, True, 0.2)]
    shown = json.loads(run(_app(), ["model", "show", "1", *opts]).output)
    assert shown["source"] == str(bundles["a"].resolve()) and shown["current"] is False
    out = run(_app(), ["model", "rollback", *opts])
    assert out.exit_code == 0 and "current: v1" in out.output, out.output
    out = run(_app(), ["model", "rollback", *opts])
    assert "the shipped model" in out.output
    assert ModelRegistry(reg).current() is None
    assert run(_app(), ["model", "rollback", *opts]).exit_code == 2
    actions = [e["action"] for e in ModelRegistry(reg).log()]
    assert actions == ["refused", "promote", "refused", "promote", "rollback", "rollback"]


def test_registry_is_signed_with_a_key(bundles, tmp_path, monkeypatch):
    from pbi_bluesky.models.registry import ModelRegistry, RegistryError

    monkeypatch.setenv("PBI_MODEL_KEY", "k18")
    signed = _variant(bundles["a"], tmp_path / "signed")
    from pbi_bluesky.models.signing import sign

    sign(signed)
    reg = ModelRegistry(tmp_path / "registry")
    v = reg.promote(signed)
    assert v.info["signed"] and (reg.root / "registry.json.hmac").is_file()
    raw = json.loads((reg.root / "registry.json").read_text())
    raw["current"] = 7
    (reg.root / "registry.json").write_text(json.dumps(raw))
    with pytest.raises(RegistryError, match="does not match its signature"):
        reg.current()


def test_live_scorer_takes_a_promoted_model_at_the_next_run_only(
        bundles, core_kwargs, bus_files, bus_instrument, tmp_path):
    from pbi_bluesky.live import LiveScorer
    from pbi_bluesky.models import load_bundle
    from pbi_bluesky.models.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "registry")
    reg.promote(bundles["a"])
    old, new = load_bundle(bundles["a"]), load_bundle(bundles["b"])
    assert old.threshold != new.threshold
    docs: list[tuple[str, dict]] = []
    live = LiveScorer(**core_kwargs, registry=reg.root, sinks=[lambda n, d: docs.append((n, d))])
    rng = np.random.default_rng(7)
    poni = bus_files["poni_text"]
    kinds = ("normal",)
    uid1, run1 = run_docs(sample_md(poni, sample="one"), shots(bus_instrument, rng, 6,
                                                                kinds=kinds))
    uid2, run2 = run_docs(sample_md(poni, sample="two"), shots(bus_instrument, rng, 3,
                                                                kinds=kinds))
    try:
        half = [i for i, (n, _d) in enumerate(run1) if n == "event"][3]
        for name, doc in run1[:half]:
            live(name, doc)
        assert live.flush(60)
        promoted = reg.promote(bundles["b"])  # mid-run: run 1 keeps the old model
        for name, doc in run1[half:] + run2:
            live(name, doc)
        assert live.flush(60)
    finally:
        live.close()
    starts = {d["raw_uid"]: d for n, d in docs if n == "start"}
    assert starts[uid1]["model_registry_version"] == 1
    assert starts[uid2]["model_registry_version"] == promoted.number == 2
    assert starts[uid1]["model_origin"] == starts[uid2]["model_origin"] == "registry"
    assert starts[uid2]["model_sha256"] == promoted.model_sha256 != starts[uid1]["model_sha256"]
    by_start = {d["uid"]: d["raw_uid"] for n, d in docs if n == "start"}
    descriptors = {d["uid"]: by_start[d["run_start"]] for n, d in docs if n == "descriptor"}
    thresholds: dict[str, list[float]] = {uid1: [], uid2: []}
    for name, doc in docs:
        if name == "event" and "threshold" in doc["data"]:
            thresholds[descriptors[doc["descriptor"]]].append(doc["data"]["threshold"])
    assert len(thresholds[uid1]) == 6 and len(thresholds[uid2]) == 3
    assert all(t == pytest.approx(old.threshold) for t in thresholds[uid1])
    assert all(t == pytest.approx(new.threshold) for t in thresholds[uid2])


def test_with_nothing_promoted_the_shipped_model_scores_and_is_named(tmp_path):
    """Issue 18 item 5: a scorer with a registry and nothing promoted (and no
    ``scorer.model``) scores with the shipped model, and its analysis runs say so."""
    from pbi_bluesky.live import LiveScorer
    from pbi_bluesky.models.bundle import DEFAULT_MODEL_DIR, sha256_file
    from pbi_bluesky.models.registry import ModelRegistry
    from pbi_bluesky.simulate import Instrument, expected_dark, make_geometry
    from tests.bus.runs import cell_run

    # a Pilatus 300K at 1.6 m measures the shipped model's whole grid (q 0.008-0.19)
    inst = Instrument(geometry=make_geometry("Pilatus300k", 1.6), npt=200,
                      beamstop_radius_px=6, q_range_inv_angstrom=(0.0075, 0.195))
    inst.write_poni(tmp_path / "p.poni")
    poni = (tmp_path / "p.poni").read_text()
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.current() is None
    docs: list[tuple[str, dict]] = []
    live = LiveScorer(registry=registry.root, mask=inst.mask, dark=expected_dark(inst),
                      npt=inst.npt, sinks=[lambda n, d: docs.append((n, d))])
    rng = np.random.default_rng(3)
    _cell, cell_docs = cell_run(inst, rng, poni)
    uid, sample_docs = run_docs(sample_md(poni, sample="one"),
                                shots(inst, rng, 2, kinds=("normal",)))
    try:
        for name, doc in cell_docs + sample_docs:
            live(name, doc)
        assert live.flush(60)
    finally:
        live.close()
    start = next(d for n, d in docs if n == "start" and d["raw_uid"] == uid)
    assert start["model_sha256"] == sha256_file(DEFAULT_MODEL_DIR / "model.json")
    assert start["model_origin"] == "shipped"
    assert start["model_path"] == str(DEFAULT_MODEL_DIR.resolve())
    assert "model_registry_version" not in start  # nothing promoted
    by_start = {d["uid"]: d["raw_uid"] for n, d in docs if n == "start"}
    descriptors = {d["uid"]: by_start[d["run_start"]] for n, d in docs if n == "descriptor"}
    events = [d["data"] for n, d in docs
              if n == "event" and descriptors.get(d["descriptor"]) == uid and "status" in d["data"]]
    assert [e["status"] for e in events] == ["scored", "scored"], events
    assert all(np.isfinite(e["score"]) and e["predicted_composition"] == "50:50"
               for e in events)


def test_a_model_that_passes_gross_errors_as_normal_is_refused(instrument, tiny_model,
                                                               tmp_path):
    """``can_flag`` alone let through a cross-conformal model trained on 5 normals per
    recipe that flagged nothing real (the demo's loop at 5 per recipe: precision and
    recall 0). It must not flag-check only in theory: a recipe's mean normal curve scaled by
    3 or 1/3 has to be flagged, else promotion refuses it and the current model stays."""
    import torch

    from pbi_bluesky.models import AnomalyDetector, TrainingConfig, save_bundle
    from pbi_bluesky.models.registry import ModelRegistry, RegistryError
    from pbi_bluesky.models.sanity import gross_error_misses
    from tests.conftest import simulated_normals

    torch.set_num_threads(2)
    profiles, recipes = simulated_normals(instrument, 5, np.random.default_rng(1234))
    weak = AnomalyDetector(training=TrainingConfig(epochs=20, alpha=0.1, seed=0)).fit(
        profiles, recipes, progress=False)
    assert weak.can_flag  # the old check passed it
    misses = gross_error_misses(weak)
    assert len(misses) >= 3, misses
    assert gross_error_misses(tiny_model) == []
    reg = ModelRegistry(tmp_path / "registry")
    save_bundle(tiny_model, tmp_path / "good")
    save_bundle(weak, tmp_path / "weak")
    assert reg.promote(tmp_path / "good").number == 1
    with pytest.raises(RegistryError, match=r"does not flag \d+ gross error"):
        reg.promote(tmp_path / "weak")
    assert reg.current().number == 1
