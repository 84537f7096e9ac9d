"""Model bundles: a directory anyone can inspect, that never executes code when loaded.

Layout::

    model.json            format, versions, q grid, preprocessing, recipes, alpha,
                          calibration scores, metrics, training-data hash, and the
                          sha256 of every other file
    weights.safetensors   the embedding network (safetensors: tensors only)
    arrays.npz            scaler, references, scatter, centroids, one-class SVMs
                          (support vectors, dual coefficients, intercept, gamma),
                          subspaces, calibration scores with their model and recipe;
                          a cross-conformal bundle holds K models (``member{k}_``);
                          read with ``allow_pickle=False``
    training_curve.png    loss per epoch (not needed to load)

Loading checks the format, every hash and every array; a tampered, truncated or foreign
file raises :class:`BundleError` naming the file. No pickle, no ``torch.load``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from pbi_bluesky.models.attribution import DescriptorPopulation
from pbi_bluesky.models.conformal import Calibration
from pbi_bluesky.models.detector import AnomalyDetector
from pbi_bluesky.models.network import NetworkConfig
from pbi_bluesky.models.paper import PaperPipeline
from pbi_bluesky.models.representation import FeatureScaler, QGrid
from pbi_bluesky.models.settings import TrainingConfig
from pbi_bluesky.models.signing import SignatureError, sign
from pbi_bluesky.models.signing import verify as verify_signature

__all__ = [
    "BundleError",
    "set_bundle_precision",
    "FORMAT",
    "FORMAT_VERSION",
    "DEFAULT_MODEL_DIR",
    "save_bundle",
    "load_bundle",
    "ensure_can_flag",
    "load_default_model",
    "sha256_file",
    "training_data_hash",
]

logger = logging.getLogger(__name__)

FORMAT = "pbi_bluesky.model"
FORMAT_VERSION = 3
"""Version written. 3 added the calibration record (method split/cross, Mondrian, the
model and recipe of every calibration score) and cross-conformal members (``member{k}``
prefixes in both files); 2 added the subspace part of the score (calibration scores are
the combined score) and the ``detector`` kind. Versions 1 and 2 still load (split
calibration pooled over recipes; a version-1 score is the one-class SVM part alone); one
whose threshold is infinite is refused for scoring (:func:`ensure_can_flag`)."""
READABLE_VERSIONS = (1, 2, 3)
WEIGHTS = "weights.safetensors"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "default_model"
"""The bundle trained on simulated PS/PMMA that ships with the package (``make model``)."""
ARRAYS = "arrays.npz"


class BundleError(ValueError):
    """A model bundle is missing, tampered with, foreign or of an unknown version."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_version() -> str:
    try:
        return importlib_metadata.version("pbi_bluesky")
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "unknown"


def save_bundle(
    detector: AnomalyDetector,
    out_dir: str | Path,
    *,
    training_data_sha256: str = "",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``detector`` as a bundle directory; returns the path of ``model.json``."""
    from safetensors.torch import save_file

    if detector.scaler is None or detector.calibration is None:
        raise BundleError("cannot save an untrained detector")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    state: dict[str, Any] = {}
    if detector.members:
        # cross-conformal: the shared recipe references, then each model with a prefix
        arrays.update({"noise_scale": detector.scaler.noise_scale,
                       "feature_mean": detector.scaler.mean,
                       "feature_std": detector.scaler.std,
                       "references": detector.references, "scatter": detector.scatter})
        for k, member in enumerate(detector.members):
            arrays.update({f"member{k}_{n}": v for n, v in member.core_arrays().items()})
            state.update({f"member{k}.{n}": v
                          for n, v in member.network.state_dict().items()})
    else:
        arrays.update(detector.core_arrays())
        state.update(detector.network.state_dict())
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(out / WEIGHTS))
    arrays.update(detector.calibration.to_arrays())
    arrays["extra_calibration_parts"] = detector.calibration_parts
    if detector.population is not None:
        arrays.update({"extra_desc_mean": detector.population.mean,
                       "extra_desc_std": detector.population.std,
                       "extra_desc_precision": detector.population.precision})
    np.savez(out / ARRAYS, **arrays)
    _training_curve(detector.history, out / "training_curve.png")
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": package_version(),
        "detector": detector.name,
        "q_grid": {"q_min": detector.grid.q_min, "q_max": detector.grid.q_max,
                   "npt": detector.grid.npt, "spacing": "log",
                   "min_coverage": detector.grid.min_coverage, "unit": "1/angstrom"},
        "preprocessing": detector.preprocessing,
        "network": detector.network.config.to_dict(),
        "training": detector.training.to_dict(),
        "recipes": detector.recipes,
        "alpha": detector.alpha,
        "threshold": detector.threshold,
        "calibration": detector.calibration_summary(),
        "members": len(detector.members),
        "calibration_scores": [float(s) for s in detector.calibration_scores],
        "metrics": detector.metrics,
        "history": detector.history,
        "training_data_sha256": training_data_sha256,
        "files": {WEIGHTS: sha256_file(out / WEIGHTS), ARRAYS: sha256_file(out / ARRAYS)},
        **(extra or {}),
    }
    (out / "model.json").write_text(json.dumps(doc, indent=1))
    stale = out / "model.json.hmac"
    if sign(out) is None and stale.exists():
        stale.unlink()  # an old signature of another model.json would be refused
    return out / "model.json"


def _training_curve(history: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(np.arange(1, len(history) + 1), history, marker=".")
    ax.set_xlabel("epoch")
    ax.set_ylabel("triplet loss")
    ax.set_title("pbi_bluesky embedding training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"no model.json in {path.parent} (not a pbi_bluesky model bundle)")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BundleError(f"{path} is not a {FORMAT} file (foreign model?)")
    if doc.get("format_version") not in READABLE_VERSIONS:
        raise BundleError(
            f"{path} has format version {doc.get('format_version')}, this package reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    return doc


def load_bundle(model_dir: str | Path, *, for_scoring: bool = True) -> AnomalyDetector:
    """Load and verify a bundle written by :func:`save_bundle`.

    With ``for_scoring`` (the default) a model that can never flag a curve (its threshold
    is infinite: too few calibration normals for its alpha) is refused with a
    :class:`BundleError` saying why (:func:`ensure_can_flag`); ``for_scoring=False``
    loads it anyway, for inspection.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(model_dir)
    doc = _read_json(root / "model.json")
    signed = _verify_files(root, doc)
    grid = QGrid(**{k: doc["q_grid"][k] for k in ("q_min", "q_max", "npt", "min_coverage")})
    kinds = {cls.name: cls for cls in (AnomalyDetector, PaperPipeline)}
    if doc.get("detector", "pbi") not in kinds:
        raise BundleError(f"{root / 'model.json'} holds detector {doc.get('detector')!r}; "
                          f"this package knows {', '.join(kinds)}")
    kind = kinds[doc.get("detector", "pbi")]
    n_members = int(doc.get("members", 0))
    try:
        network = NetworkConfig.from_dict(doc["network"])
        training = TrainingConfig(**doc["training"])
        detector = kind(grid, network, training)
        members = [kind(grid, network, training) for _ in range(n_members)]
    except (TypeError, KeyError, ValueError) as exc:
        raise BundleError(f"{root / 'model.json'} has network or training settings this "
                          f"package cannot use (written by another version?): {exc}") from exc
    try:
        state = load_file(str(root / WEIGHTS))
        if members:
            for k, member in enumerate(members):
                prefix = f"member{k}."
                member.network.load_state_dict({n[len(prefix):]: v for n, v in state.items()
                                                if n.startswith(prefix)})
        else:
            detector.network.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise BundleError(f"{root / WEIGHTS} is not valid network weights: {exc}") from exc
    try:
        with np.load(root / ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise BundleError(f"{root / ARRAYS} is not a plain numpy archive: {exc}") from exc
    _restore_arrays(detector, members, doc, arrays, root)
    detector.alpha = float(doc["alpha"])
    detector.history = list(doc.get("history", []))
    detector.metrics = dict(doc.get("metrics", {}))
    detector.bundle_info = {
        "path": str(root.resolve()),
        "model_sha256": sha256_file(root / "model.json"),
        "signature": "hmac-sha256 verified" if signed else "none (no PBI_MODEL_KEY)",
        "package_version": doc.get("package_version"),
        "training_data_sha256": doc.get("training_data_sha256"),
        "format_version": doc.get("format_version"),
        "origin": "bundle",
    }
    from pbi_bluesky.models.quantize import apply_inference

    try:  # "inference": {"precision": "int8", ...}: quantised again from the float weights
        apply_inference(detector, doc.get("inference"))
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"{root / 'model.json'} asks for inference settings this package "
                          f"cannot use: {exc}") from exc
    detector.bundle_info["inference"] = detector.inference
    if for_scoring:
        ensure_can_flag(detector)
    return detector


def _verify_files(root: Path, doc: dict[str, Any]) -> bool:
    """Check a bundle's signature and the sha256 of its files; return whether it is signed.

    Raises :class:`BundleError` for a bad or missing signature (when a key is set), a file
    model.json does not list, a missing file, or one whose content changed.
    """
    try:
        signed = verify_signature(root)
    except SignatureError as exc:
        raise BundleError(str(exc)) from exc
    files = doc.get("files", {})
    for name in (WEIGHTS, ARRAYS):
        path = root / name
        if name not in files:
            raise BundleError(f"model.json lists no sha256 for {name}")
        if not path.is_file():
            raise BundleError(f"bundle file {path} is missing")
        if sha256_file(path) != files[name]:
            raise BundleError(f"{path} does not match its sha256 in model.json (tampered?)")
    return signed


def _restore_arrays(detector: AnomalyDetector, members: list[AnomalyDetector],
                    doc: dict[str, Any], arrays: dict[str, np.ndarray], root: Path) -> None:
    """Put the fitted arrays (scaler, references, calibration...) back into a detector.

    Raises :class:`BundleError` when an array is missing or the calibration arrays do not
    fit together.
    """
    try:
        detector.recipes = list(doc["recipes"])
        if members:
            detector.scaler = FeatureScaler(arrays["noise_scale"], arrays["feature_mean"],
                                            arrays["feature_std"])
            detector.references = arrays["references"]
            detector.scatter = arrays["scatter"]
            for k, member in enumerate(members):
                member.recipes = detector.recipes
                prefix = f"member{k}_"
                member.load_core_arrays({n[len(prefix):]: v for n, v in arrays.items()
                                         if n.startswith(prefix)})
            detector.members = members
        else:
            if "extra_residual_stats" not in arrays:
                raise KeyError("extra_residual_stats")
            detector.load_core_arrays(arrays)
        detector.calibration_parts = arrays.get("extra_calibration_parts", np.zeros((0, 2)))
        if "extra_desc_mean" in arrays:
            detector.population = DescriptorPopulation(
                arrays["extra_desc_mean"], arrays["extra_desc_std"],
                arrays["extra_desc_precision"])
        cal = doc.get("calibration") or {}
        detector.calibration = Calibration.from_arrays(
            arrays, method=cal.get("method", "split"), mondrian=bool(cal.get("mondrian")),
            n_members=max(len(members), 1), alpha_source=cal.get("alpha_source", "given"),
            tolerance=cal.get("fpr_tolerance"))  # older bundles: the marginal rule
    except KeyError as exc:
        raise BundleError(f"{root / ARRAYS} lacks array {exc}") from exc
    except ValueError as exc:
        raise BundleError(f"{root / ARRAYS} holds inconsistent calibration arrays: "
                          f"{exc}") from exc


def ensure_can_flag(detector: AnomalyDetector) -> AnomalyDetector:
    """Return ``detector`` if it can flag a curve of every recipe; else a clear error.

    A model whose calibration set is too small for its alpha has an infinite threshold:
    no p-value can reach alpha, so it would call every curve normal, silently. Every
    scorer (``pbi score``, the live scorer) must refuse it; this is the one check.

    Raises
    ------
    BundleError
        Naming the model, its calibration size, smallest reachable p-value and alpha.
    """
    if detector.can_flag:
        return detector
    where = detector.bundle_info.get("path", "<in memory>")
    cal = detector.calibration
    if cal is None:
        raise BundleError(f"model {where} has no calibration (it was never trained)")
    sizes = {detector.recipes[g] if 0 <= g < len(detector.recipes) else "all": cal.size(g)
             for g in cal.groups()}
    what = (f"{cal.size(cal.groups()[0])} calibration normals" if len(sizes) == 1 else
            "calibration normals per recipe " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    raise BundleError(
        f"model {where} can never flag a curve: with {what} the smallest conformal p-value "
        f"is {cal.smallest_p():.4g} > alpha {detector.alpha:g}, so its threshold is infinite "
        "and every curve would be called normal. Retrain it with `pbi train` (it chooses a "
        "calibration that reaches alpha, or says how many normals are missing), or give a "
        "larger alpha at training time.")


def load_default_model(*, for_scoring: bool = True) -> AnomalyDetector:
    """Load the shipped default bundle (trained on simulated PS/PMMA, see ``make model``)."""
    if not (DEFAULT_MODEL_DIR / "model.json").is_file():
        raise BundleError(f"the default model is missing from {DEFAULT_MODEL_DIR}; "
                          "run `make model` to build it")
    detector = load_bundle(DEFAULT_MODEL_DIR, for_scoring=for_scoring)
    detector.bundle_info["origin"] = "shipped"  # analysis runs name it: model_origin
    return detector


def training_data_hash(intensity: np.ndarray, sigma: np.ndarray, recipes: list[str]) -> str:
    """sha256 of the resampled training curves and their labels."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(intensity, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(sigma, dtype=np.float64).tobytes())
    digest.update("\n".join(recipes).encode())
    return digest.hexdigest()


def set_bundle_precision(model_dir: str, precision: str, scheme: str = "static") -> dict:
    """Select ``precision`` for an existing bundle.

    Writes the ``"inference"`` section of its ``model.json`` (atomically); the weights file
    is not touched. Returns the section.
    """
    import os
    import tempfile

    from pbi_bluesky.models.quantize import apply_inference, inference_settings

    root = Path(model_dir)
    detector = load_bundle(root)
    settings = inference_settings(detector, precision, scheme)
    apply_inference(detector, settings)  # refuse settings that would not load
    doc = json.loads((root / "model.json").read_text())
    doc["inference"] = settings
    fd, tmp = tempfile.mkstemp(prefix=".model-", suffix=".json", dir=root)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(tmp, root / "model.json")
    return settings


def main(argv: list[str] | None = None) -> None:
    """``python -m pbi_bluesky.models.bundle BUNDLE --precision int8``."""
    import argparse

    from pbi_bluesky.models.quantize import PRECISIONS, SCHEMES

    parser = argparse.ArgumentParser(description="Select a model bundle's inference precision.")
    parser.add_argument("bundle")
    parser.add_argument("--precision", choices=PRECISIONS, default="int8")
    parser.add_argument("--scheme", choices=SCHEMES, default="static")
    args = parser.parse_args(argv)
    settings = set_bundle_precision(args.bundle, args.precision, args.scheme)
    print(f"{args.bundle}: inference precision {settings['precision']}"
          + (f" ({settings['scheme']})" if "scheme" in settings else ""))


if __name__ == "__main__":
    main()
