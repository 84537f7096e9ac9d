"""The on-disk folded-operator cache: hits, keys, atomic writes, corrupt files, opt-out."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pbi_bluesky.reduction import FoldedIntegrator, make_geometry
from pbi_bluesky.reduction.opcache import ENV_VAR, OperatorCache, default_cache_dir

NPT = 80


@pytest.fixture(scope="module")
def small():
    ai = make_geometry("Pilatus100k", distance_m=2.0)
    shape = ai.detector.shape
    q = ai.array_from_unit(shape, "center", "q_A^-1", scale=True)
    rng = np.random.default_rng(3)
    frame = rng.poisson(20.0, shape).astype(np.int32)
    dark = rng.uniform(0, 1, shape).astype(np.float32)
    return {"ai": ai, "shape": shape, "q_range": (float(q.min()), float(q.max())),
            "frame": frame, "dark": dark}


def build(small, cache, **kw):
    return FoldedIntegrator(small["ai"], small["shape"], NPT, small["q_range"],
                            dark=small["dark"], cache=cache, **kw)


def test_cold_then_warm_gives_the_same_numbers(small, tmp_path):
    cold = build(small, tmp_path)
    assert cold.setup_info["cache"] == "miss"
    files = list(tmp_path.glob("op-*.npz"))
    assert [f.name for f in files] == [Path(cold.setup_info["path"]).name]
    assert not list(tmp_path.glob(".op-*"))  # no temporary file left behind
    warm = build(small, tmp_path)
    assert warm.setup_info["cache"] == "hit"
    a = cold.integrate(small["frame"], 2.0)
    b = warm.integrate(small["frame"], 2.0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(cold.count, warm.count)


def test_every_setting_changes_the_key(small, tmp_path):
    base = build(small, tmp_path)
    mask = np.zeros(small["shape"], bool)
    mask[:5] = True
    others = [
        build(small, tmp_path, mask=mask),
        build(small, tmp_path, polarization_factor=0.9),
        build(small, tmp_path, correct_solid_angle=False),
        build(small, tmp_path, split="no"),
        FoldedIntegrator(small["ai"], small["shape"], NPT + 1, small["q_range"],
                         dark=small["dark"], cache=tmp_path),
        FoldedIntegrator(small["ai"], small["shape"], NPT, (small["q_range"][0] + 1e-3,
                                                           small["q_range"][1]),
                         dark=small["dark"], cache=tmp_path),
        FoldedIntegrator(small["ai"], small["shape"], NPT, small["q_range"],
                         dark=small["dark"] + 1, cache=tmp_path),
        FoldedIntegrator(make_geometry("Pilatus100k", distance_m=2.1), small["shape"], NPT,
                         small["q_range"], dark=small["dark"], cache=tmp_path),
    ]
    keys = {base.cache_key, *(o.cache_key for o in others)}
    assert len(keys) == 1 + len(others)
    assert all(o.setup_info["cache"] == "miss" for o in others)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign_meta", "bad_array",
                                    "pickle"])
def test_corrupt_cache_file_is_rebuilt_with_a_warning(small, tmp_path, caplog, damage):
    good = build(small, tmp_path)
    path = Path(good.setup_info["path"])
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all" * 100)
    else:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if damage == "foreign_meta":
            arrays["meta"] = np.array('{"format": "someone else"}')
        elif damage == "bad_array":
            code = arrays["code"].copy()
            code[np.flatnonzero((code & 0xFFFF) != 0xFFFF)[0]] = NPT + 5  # bin out of range
            arrays["code"] = code
        else:  # an object array can only be read with pickle: must be refused
            arrays["weight"] = np.array([{"x": 1}], dtype=object)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays, allow_pickle=True)
    with caplog.at_level(logging.WARNING, logger="pbi_bluesky.reduction"):
        again = build(small, tmp_path)
    assert again.setup_info["cache"] == "rebuilt"
    assert any("rebuild" in r.getMessage() for r in caplog.records)
    a = good.integrate(small["frame"])
    b = again.integrate(small["frame"])
    np.testing.assert_array_equal(a[0], b[0])
    # the rebuilt file is good again
    assert build(small, tmp_path).setup_info["cache"] == "hit"
    with zipfile.ZipFile(path) as zf:
        assert "meta.npy" in zf.namelist()


def test_cache_off_and_unwritable_folder(small, tmp_path, caplog, monkeypatch):
    off = build(small, False)
    assert off.setup_info == {"cache": "off", "seconds": off.setup_info["seconds"],
                              "path": None}
    monkeypatch.setenv(ENV_VAR, "off")
    assert default_cache_dir() is None
    assert build(small, None).setup_info["cache"] == "off"
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="pbi_bluesky.reduction"):
        fi = build(small, blocker / "sub")
    assert fi.setup_info["cache"] == "miss"
    assert any("cannot write" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(fi.integrate(small["frame"])[0],
                                  off.integrate(small["frame"])[0])


def test_default_folder_is_the_user_cache_not_the_source_tree(monkeypatch):
    import pbi_bluesky

    monkeypatch.delenv(ENV_VAR, raising=False)
    folder = default_cache_dir()
    assert folder is not None and folder.name == "operators"
    source = Path(pbi_bluesky.__file__).resolve().parent.parent
    assert source not in folder.resolve().parents
    monkeypatch.setenv(ENV_VAR, "~/somewhere")
    assert default_cache_dir() == Path(os.path.expanduser("~/somewhere"))


def test_pruning_keeps_the_newest_entries(tmp_path, monkeypatch):
    import pbi_bluesky.reduction.opcache as oc

    monkeypatch.setattr(oc, "MAX_ENTRIES", 3)
    cache = OperatorCache(tmp_path)
    for k in range(5):
        cache.store(f"k{k}", "{}", {"a": np.arange(3)})
        os.utime(cache.path(f"k{k}"), (k, k))
    cache.store("k5", "{}", {"a": np.arange(3)})
    assert sorted(p.name for p in tmp_path.glob("op-*.npz")) == [
        "op-k3.npz", "op-k4.npz", "op-k5.npz"]
    assert cache.load("k5", "{}")["a"].tolist() == [0, 1, 2]
    assert cache.load("k5", '{"other": 1}') is None  # stored settings differ from the key
