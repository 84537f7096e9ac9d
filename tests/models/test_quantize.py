"""int8 inference: selected in model.json, rebuilt from the float weights, close to float."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pbi_bluesky.models.bundle import (
    BundleError,
    load_bundle,
    save_bundle,
    set_bundle_precision,
    sha256_file,
)
from pbi_bluesky.models.quantize import apply_inference, inference_settings, quantize_network


@pytest.fixture(scope="module")
def curves(training_set, tiny_model):
    profiles, recipes = training_set
    intensity, sigma = tiny_model.resample(profiles[::4])
    idx = np.array([tiny_model.recipes.index(r) for r in recipes[::4]])
    return intensity, sigma, idx


@pytest.fixture(scope="module")
def int8_settings(tiny_model):
    return inference_settings(tiny_model, "int8")


def test_int8_embeddings_stay_close_to_float(tiny_model, curves, int8_settings):
    det = tiny_model
    intensity, sigma, idx = curves
    ref = det._embed(intensity, sigma, idx)
    try:
        apply_inference(det, int8_settings)
        assert det.inference["precision"] == "int8"
        got = det._embed(intensity, sigma, idx)
    finally:
        apply_inference(det, None)
    assert det.inference == {"precision": "float32"}
    np.testing.assert_array_equal(det._embed(intensity, sigma, idx), ref)
    cos = np.sum(ref * got, axis=1)  # unit vectors
    assert np.all(cos > 0.95) and np.median(cos) > 0.98  # measured: min 0.969, median 0.990
    assert not np.array_equal(got, ref)  # it really ran a different network


def test_dynamic_scheme_quantises_the_linear_layers(tiny_model):
    net = quantize_network(tiny_model.network, None, "dynamic")
    assert "DynamicQuantizedLinear" in repr(net)
    with pytest.raises(ValueError, match="scheme"):
        quantize_network(tiny_model.network, None, "float16")
    with pytest.raises(ValueError, match="ranges"):
        quantize_network(tiny_model.network, {"quant": [0, 1]})


def test_bundle_records_int8_and_rebuilds_it_exactly(tiny_model, curves, int8_settings,
                                                      tmp_path):
    intensity, sigma, idx = curves
    float_dir, int8_dir = tmp_path / "f32", tmp_path / "i8"
    save_bundle(tiny_model, float_dir)
    save_bundle(tiny_model, int8_dir, extra={"inference": int8_settings})
    doc = json.loads((int8_dir / "model.json").read_text())
    assert doc["inference"]["precision"] == "int8"
    # the weights file is the float one: nothing quantised is stored
    assert sha256_file(int8_dir / "weights.safetensors") == \
        sha256_file(float_dir / "weights.safetensors")
    a = load_bundle(int8_dir)
    b = load_bundle(int8_dir)
    assert a.bundle_info["inference"]["precision"] == "int8"
    np.testing.assert_array_equal(a._embed(intensity, sigma, idx),
                                  b._embed(intensity, sigma, idx))
    assert load_bundle(float_dir).bundle_info["inference"] == {"precision": "float32"}


@pytest.mark.parametrize("bad", [{"precision": "int4"},
                                 {"precision": "int8", "scheme": "static",
                                  "activation_ranges": [{"quant": [0.0, 1.0]}]},
                                 {"precision": "int8", "scheme": "static",
                                  "activation_ranges": []},
                                 {"precision": "int8", "scheme": "magic"}])
def test_bad_inference_settings_are_a_bundle_error(tiny_model, tmp_path, bad):
    save_bundle(tiny_model, tmp_path, extra={"inference": bad})
    with pytest.raises(BundleError, match="inference"):
        load_bundle(tmp_path)


def test_set_bundle_precision_switches_an_existing_bundle(tiny_model, curves, tmp_path):
    save_bundle(tiny_model, tmp_path)
    weights = sha256_file(tmp_path / "weights.safetensors")
    set_bundle_precision(str(tmp_path), "int8")
    det = load_bundle(tmp_path)
    assert det.bundle_info["inference"]["precision"] == "int8"
    assert sha256_file(tmp_path / "weights.safetensors") == weights
    set_bundle_precision(str(tmp_path), "float32")
    assert load_bundle(tmp_path).inference == {"precision": "float32"}
    assert isinstance(det.inference_network, torch.nn.Module)
