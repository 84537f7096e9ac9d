"""int8 inference for the embedding CNN: post-training static quantisation (torch.ao).

A bundle selects it in ``model.json``::

    "inference": {"precision": "int8", "scheme": "static", "engine": "x86",
                  "activation_ranges": [{"quant": [lo, hi], "features.0": [lo, hi], ...}],
                  "calibration": {...}}

Nothing quantised is stored and nothing is unpickled: at load time the float32 weights
(``weights.safetensors``) are quantised again (per-channel int8 weights, computed from the
weights themselves) and the activation scales come from the ranges in ``model.json``
(plain numbers, one dict per model of the bundle), so the int8 network is rebuilt exactly,
every time. :func:`calibrate` measures those ranges once, on curves synthesised from the
bundle's own references, scatter and noise plus the training transforms' synthetic
negatives (so anomalous inputs are inside the calibrated range too).

``"scheme": "dynamic"`` (int8 weights of the two fully connected layers only, activations
quantised on the fly) is the alternative torch.ao offers; the convolutions hold ~90 % of
the work, so it barely changes the speed (``benchmarks/bench_int8.py`` measures both).

torch 2.13 still ships ``torch.ao.quantization`` (eager mode) but marks it deprecated in
favour of torchao, which is not installed here; its deprecation warnings are silenced
inside this module only.
"""

from __future__ import annotations

import copy
import logging
import warnings
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from pbi_bluesky.models.augment import TRANSFORMS, synthetic_anomaly
from pbi_bluesky.models.network import EmbeddingCNN

__all__ = ["PRECISIONS", "SCHEMES", "apply_inference", "calibrate", "inference_settings",
           "quantize_network"]

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "int8")
SCHEMES = ("static", "dynamic")
CALIBRATION_PER_RECIPE = 64


@contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                module=r"torch\.ao\..*")
        yield


class _Quantizable(nn.Module):
    """:class:`EmbeddingCNN` between quant/dequant stubs (the L2 norm stays in float)."""

    def __init__(self, net: EmbeddingCNN) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.config = net.config
        self.quant = QuantStub()
        self.features = copy.deepcopy(net.features)
        self.head = copy.deepcopy(net.head)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dequant(self.head(self.features(self.quant(x))))
        return nn.functional.normalize(y, dim=1)


def _fusion_groups(net: _Quantizable) -> list[list[str]]:
    groups = []
    mods = list(net.features)
    for k in range(len(mods) - 1):
        if isinstance(mods[k], nn.Conv1d) and isinstance(mods[k + 1], nn.ReLU):
            groups.append([f"features.{k}", f"features.{k + 1}"])
    head = list(net.head)
    for k in range(len(head) - 1):
        if isinstance(head[k], nn.Linear) and isinstance(head[k + 1], nn.ReLU):
            groups.append([f"head.{k}", f"head.{k + 1}"])
    return groups


def _prepared(network: EmbeddingCNN, engine: str) -> nn.Module:
    """Return a float copy with fused conv/linear+ReLU and min/max activation observers."""
    from torch.ao.quantization import (
        MinMaxObserver,
        QConfig,
        default_per_channel_weight_observer,
        fuse_modules,
        prepare,
    )

    with _quiet():
        net = _Quantizable(network).eval()
        net = fuse_modules(net, _fusion_groups(net))
        # x86/fbgemm: 7-bit activations, so the int16 accumulation cannot overflow
        top = 127 if engine in ("x86", "fbgemm") else 255
        net.qconfig = QConfig(
            activation=MinMaxObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=top),
            weight=default_per_channel_weight_observer)
        return prepare(net)


def _observers(prepared: nn.Module) -> dict[str, Any]:
    from torch.ao.quantization import MinMaxObserver

    return {name.removesuffix(".activation_post_process"): mod
            for name, mod in prepared.named_modules()
            if isinstance(mod, MinMaxObserver) and name.endswith("activation_post_process")}


def _engine() -> str:
    return torch.backends.quantized.engine


@torch.no_grad()
def calibrate(network: EmbeddingCNN, inputs: torch.Tensor) -> dict[str, list[float]]:
    """Activation ranges ``{observer: [min, max]}`` of ``network`` over ``inputs``."""
    prepared = _prepared(network, _engine())
    with _quiet():
        for start in range(0, len(inputs), 256):
            prepared(inputs[start:start + 256])
    return {name: [float(obs.min_val), float(obs.max_val)]
            for name, obs in _observers(prepared).items()}


def quantize_network(network: EmbeddingCNN, ranges: dict[str, list[float]] | None = None,
                     scheme: str = "static") -> nn.Module:
    """Return an int8 copy of ``network`` (its float weights are left untouched).

    ``scheme="static"`` needs the activation ``ranges`` of :func:`calibrate`;
    ``"dynamic"`` quantises the fully connected layers only.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"int8 scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "dynamic":
        from torch.ao.quantization import quantize_dynamic

        with _quiet():
            out = quantize_dynamic(copy.deepcopy(network).eval(), {nn.Linear}, dtype=torch.qint8)
        out.config = network.config
        return out
    from torch.ao.quantization import convert

    prepared = _prepared(network, _engine())
    observers = _observers(prepared)
    if not ranges or set(ranges) != set(observers):
        raise ValueError(f"int8 activation ranges name {sorted(ranges or {})}, the network "
                         f"needs {sorted(observers)}")
    for name, obs in observers.items():
        lo, hi = (float(v) for v in ranges[name])
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise ValueError(f"int8 activation range of {name} is not finite: {ranges[name]}")
        obs.min_val = torch.tensor(lo)
        obs.max_val = torch.tensor(hi)
    with _quiet():
        return convert(prepared.eval())


def _models(detector: Any) -> list[Any]:
    members = getattr(detector, "members", None) or []
    return list(members) if members else [detector]


def _calibration_inputs(core: Any, grid_q: NDArray, rng: np.random.Generator) -> torch.Tensor:
    """Synthetic normals per recipe (reference + scatter + noise) and negatives."""
    rows_i, rows_s, rows_r = [], [], []
    noise = np.asarray(core.scaler.noise_scale)
    for k in range(len(core.references)):
        ref, sc = core.references[k], core.scatter[k]
        for j in range(CALIBRATION_PER_RECIPE):
            i = ref + sc * rng.standard_normal(ref.size) + noise * rng.standard_normal(ref.size)
            if j % 2:  # half of them transformed like the training negatives
                i = synthetic_anomaly(grid_q, i, noise, TRANSFORMS[j % len(TRANSFORMS)], rng)
            rows_i.append(i)
            rows_s.append(noise)
            rows_r.append(k)
    return core._inputs(np.array(rows_i), np.array(rows_s), np.array(rows_r))


def inference_settings(detector: Any, precision: str = "int8", scheme: str = "static",
                       seed: int = 0) -> dict[str, Any]:
    """Return the ``"inference"`` section of ``model.json`` for ``precision``.

    Parameters
    ----------
    detector
        The fitted detector; its networks are calibrated for static int8.
    precision
        One of :data:`PRECISIONS`.
    scheme
        int8 scheme: ``"static"`` (activation ranges calibrated here) or ``"dynamic"``.
    seed
        Seed of the calibration curves.

    Raises
    ------
    ValueError
        For an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return {"precision": "float32"}
    out: dict[str, Any] = {"precision": "int8", "scheme": scheme, "engine": _engine()}
    if scheme == "static":
        rng = np.random.default_rng(seed)
        ranges = []
        for core in _models(detector):
            ranges.append(calibrate(core.network, _calibration_inputs(core, detector.grid.q,
                                                                      rng)))
        out["activation_ranges"] = ranges
        out["calibration"] = {"curves_per_recipe": CALIBRATION_PER_RECIPE, "seed": seed,
                              "source": "bundle references + scatter + noise, half "
                                        "transformed like the training negatives"}
    return out


def apply_inference(detector: Any, settings: dict[str, Any] | None) -> None:
    """Give every model of ``detector`` the network ``settings`` ask for (float32: none).

    Sets ``inference_network`` (used by the embedding call) and records the precision in
    ``detector.inference``. Raises ``ValueError`` on settings it cannot honour.
    """
    settings = dict(settings or {"precision": "float32"})
    precision = settings.get("precision", "float32")
    if precision not in PRECISIONS:
        raise ValueError(f"inference precision must be one of {PRECISIONS}, got {precision!r}")
    models = _models(detector)
    if precision == "float32":
        for core in [detector, *models]:
            core.inference_network = None
        detector.inference = {"precision": "float32"}
        return
    scheme = settings.get("scheme", "static")
    ranges = settings.get("activation_ranges") or [None] * len(models)
    if len(ranges) != len(models):
        raise ValueError(f"int8 settings hold {len(ranges)} activation range sets for "
                         f"{len(models)} model(s)")
    for core, r in zip(models, ranges, strict=True):
        core.inference_network = quantize_network(core.network, r, scheme)
    if models[0] is not detector:
        detector.inference_network = models[0].inference_network
    detector.inference = {k: v for k, v in settings.items() if k != "activation_ranges"}
    logger.info("int8 inference (%s, engine %s) for %d model(s)", scheme, _engine(),
                len(models))
