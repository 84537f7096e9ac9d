"""The registry pick-up: a scorer follows the registry's current model at run starts only,
keeps its model when the registry breaks, and its copies share the reducers."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from pbi_bluesky.models.registry import ModelRegistry, RegistryError
from pbi_bluesky.scoring.engine import FrameScorer
from pbi_bluesky.scoring.pickup import ModelPickup


def _variant(src, dst, **changes):
    """A copy of a bundle with model.json settings changed (it still loads)."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / "model.json").read_text())
    doc.update(changes)
    (dst / "model.json").write_text(json.dumps(doc, indent=1))
    return dst


def test_a_scorer_follows_promotions_and_rollbacks_at_run_starts(
        core_kwargs, bus_files, tmp_path, monkeypatch):
    monkeypatch.delenv("PBI_MODEL_KEY", raising=False)
    reg = ModelRegistry(tmp_path / "registry")
    core = FrameScorer(**core_kwargs, registry=reg.root)
    assert isinstance(core.pickup, ModelPickup) and core.pickup.root == reg.root
    # nothing promoted: the scorer's own model, pinned as "0"
    assert "registry_version" not in core.model_info
    assert core.registry_pin() == "0"
    assert core.at_run_start() is core and core.for_version("0") is core

    reg.promote(bus_files["model"])
    v1 = core.at_run_start()
    assert v1 is not core and v1.model_info["registry_version"] == 1
    assert core.registry_pin() == "1"
    assert v1._reducers is core._reducers and v1.pickup is core.pickup
    assert v1.reader is not core.reader and v1.reader.recipes == tuple(v1.model.recipes)
    assert core.at_run_start() is v1  # cached per version
    assert v1.at_run_start() is v1

    variant = _variant(bus_files["model"], tmp_path / "b", alpha=0.2)
    reg.promote(variant)
    core.background = "running"  # the running background goes on into a cached copy
    v2 = v1.at_run_start()
    assert v2.model_info["registry_version"] == 2
    assert v2.model.threshold != v1.model.threshold
    assert core.for_version(1) is v1 and v1.background == "running"

    reg.rollback()
    reg.rollback()  # back to nothing promoted: the fallback model
    fallback = v2.at_run_start()
    assert fallback is not v2 and "registry_version" not in fallback.model_info
    assert fallback.model_info["model_sha256"] == core.model_info["model_sha256"]


def test_a_broken_registry_keeps_the_model_in_use(core_kwargs, bus_files, tmp_path,
                                                  monkeypatch, caplog):
    monkeypatch.delenv("PBI_MODEL_KEY", raising=False)
    reg = ModelRegistry(tmp_path / "registry")
    reg.promote(bus_files["model"])
    core = FrameScorer(**core_kwargs, registry=reg.root)
    assert core.model_info["registry_version"] == 1  # the promoted model from the start
    # a registered bundle edited after promotion does not load: version 1 stays
    reg.promote(_variant(bus_files["model"], tmp_path / "b", alpha=0.2))
    model_json = reg.version(2).path / "model.json"
    model_json.write_text(model_json.read_text() + " ")
    with caplog.at_level(logging.ERROR, logger="pbi_bluesky.scoring.pickup"):
        assert core.at_run_start() is core
    assert "version 2 does not load" in caplog.text
    # an unreadable registry: no pin (the workers keep their own model), same scorer
    (reg.root / "registry.json").write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="pbi_bluesky.scoring.pickup"):
        assert core.registry_pin() is None
        assert core.at_run_start() is core
    assert caplog.text.count("registry.json is not valid JSON") == 2  # pin and run start
    # ... and a scorer does not start on a registry it cannot read
    with pytest.raises(RegistryError, match="not valid JSON"):
        FrameScorer(**core_kwargs, registry=reg.root)


def test_reduce_only_and_reducing_copies_follow_no_registry(core_kwargs, tmp_path):
    core = FrameScorer(**core_kwargs, registry=tmp_path / "registry")
    reducing = core.reducing()
    assert reducing.pickup is None and reducing.model is None
    assert reducing.at_run_start() is reducing and reducing.registry_pin() is None
    assert reducing.for_version(3) is reducing
    assert core.pickup is not None  # the original keeps its registry
    only = FrameScorer(**core_kwargs, registry=tmp_path / "registry", reduce_only=True)
    assert only.pickup is None and only.registry_pin() is None
