"""Model bundles: a directory anyone can inspect, that never executes code when loaded.

Layout::

    model.json            format, versions, q grid, preprocessing, recipes, alpha,
                          calibration scores, metrics, training-data hash, and the
                          sha256 of every other file
    weights.safetensors   the embedding network (safetensors: tensors only)
    arrays.npz            scaler, references, scatter, centroids, one-class SVMs
                          (support vectors, dual coefficients, intercept, gamma);
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

from pbi_bluesky.models.detector import AnomalyDetector, TrainingConfig
from pbi_bluesky.models.network import NetworkConfig
from pbi_bluesky.models.ocsvm import RBFOneClass
from pbi_bluesky.models.paper import PaperPipeline
from pbi_bluesky.models.representation import FeatureScaler, QGrid

__all__ = [
    "BundleError",
    "FORMAT",
    "FORMAT_VERSION",
    "DEFAULT_MODEL_DIR",
    "save_bundle",
    "load_bundle",
    "load_default_model",
    "sha256_file",
    "training_data_hash",
]

logger = logging.getLogger(__name__)

FORMAT = "pbi_bluesky.model"
FORMAT_VERSION = 2
"""Version written. 2 added the subspace part of the score (calibration scores are the
combined score) and the ``detector`` kind; version 1 bundles still load (their score is
the one-class SVM part alone)."""
READABLE_VERSIONS = (1, 2)
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

    if detector.scaler is None:
        raise BundleError("cannot save an untrained detector")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in detector.network.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    arrays: dict[str, np.ndarray] = {
        "noise_scale": detector.scaler.noise_scale,
        "feature_mean": detector.scaler.mean,
        "feature_std": detector.scaler.std,
        "references": detector.references,
        "scatter": detector.scatter,
        "centroids": detector.centroids,
        "calibration_scores": detector.calibration_scores,
    }
    for k, svm in enumerate(detector.svms):
        arrays[f"svm{k}_support_vectors"] = svm.support_vectors
        arrays[f"svm{k}_dual_coef"] = svm.dual_coef
        arrays[f"svm{k}_intercept_gamma"] = np.array([svm.intercept, svm.gamma])
    arrays.update({f"extra_{k}": v for k, v in detector.extra_arrays().items()})
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
        "training": detector.training.__dict__,
        "recipes": detector.recipes,
        "alpha": detector.alpha,
        "threshold": detector.threshold,
        "calibration_scores": [float(s) for s in detector.calibration_scores],
        "metrics": detector.metrics,
        "history": detector.history,
        "training_data_sha256": training_data_sha256,
        "files": {WEIGHTS: sha256_file(out / WEIGHTS), ARRAYS: sha256_file(out / ARRAYS)},
        **(extra or {}),
    }
    (out / "model.json").write_text(json.dumps(doc, indent=1))
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


def load_bundle(model_dir: str | Path) -> AnomalyDetector:
    """Load and verify a bundle written by :func:`save_bundle`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(model_dir)
    doc = _read_json(root / "model.json")
    files = doc.get("files", {})
    for name in (WEIGHTS, ARRAYS):
        path = root / name
        if name not in files:
            raise BundleError(f"model.json lists no sha256 for {name}")
        if not path.is_file():
            raise BundleError(f"bundle file {path} is missing")
        if sha256_file(path) != files[name]:
            raise BundleError(f"{path} does not match its sha256 in model.json (tampered?)")
    grid = QGrid(**{k: doc["q_grid"][k] for k in ("q_min", "q_max", "npt", "min_coverage")})
    kinds = {cls.name: cls for cls in (AnomalyDetector, PaperPipeline)}
    if doc.get("detector", "pbi") not in kinds:
        raise BundleError(f"{root / 'model.json'} holds detector {doc.get('detector')!r}; "
                          f"this package knows {', '.join(kinds)}")
    try:
        detector = kinds[doc.get("detector", "pbi")](
            grid, NetworkConfig.from_dict(doc["network"]), TrainingConfig(**doc["training"])
        )
    except (TypeError, KeyError, ValueError) as exc:
        raise BundleError(f"{root / 'model.json'} has network or training settings this "
                          f"package cannot use (written by another version?): {exc}") from exc
    try:
        state = load_file(str(root / WEIGHTS))
        detector.network.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise BundleError(f"{root / WEIGHTS} is not valid network weights: {exc}") from exc
    try:
        with np.load(root / ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise BundleError(f"{root / ARRAYS} is not a plain numpy archive: {exc}") from exc
    try:
        detector.scaler = FeatureScaler(
            arrays["noise_scale"], arrays["feature_mean"], arrays["feature_std"]
        )
        detector.references = arrays["references"]
        detector.scatter = arrays["scatter"]
        detector.centroids = arrays["centroids"]
        detector.calibration_scores = arrays["calibration_scores"]
        detector.recipes = list(doc["recipes"])
        detector.svms = []
        for k in range(len(detector.recipes)):
            intercept, gamma = arrays[f"svm{k}_intercept_gamma"]
            detector.svms.append(RBFOneClass(arrays[f"svm{k}_support_vectors"],
                                             arrays[f"svm{k}_dual_coef"], float(intercept),
                                             float(gamma)))
        detector.load_extra_arrays(
            {k[len("extra_"):]: v for k, v in arrays.items() if k.startswith("extra_")}
        )
    except KeyError as exc:
        raise BundleError(f"{root / ARRAYS} lacks array {exc}") from exc
    detector.alpha = float(doc["alpha"])
    detector.history = list(doc.get("history", []))
    detector.metrics = dict(doc.get("metrics", {}))
    detector.bundle_info = {
        "path": str(root.resolve()),
        "model_sha256": sha256_file(root / "model.json"),
        "package_version": doc.get("package_version"),
        "training_data_sha256": doc.get("training_data_sha256"),
    }
    return detector


def load_default_model() -> AnomalyDetector:
    """The shipped default bundle (trained on simulated PS/PMMA, see ``make model``)."""
    if not (DEFAULT_MODEL_DIR / "model.json").is_file():
        raise BundleError(f"the default model is missing from {DEFAULT_MODEL_DIR}; "
                          "run `make model` to build it")
    return load_bundle(DEFAULT_MODEL_DIR)


def training_data_hash(intensity: np.ndarray, sigma: np.ndarray, recipes: list[str]) -> str:
    """sha256 of the resampled training curves and their labels."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(intensity, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(sigma, dtype=np.float64).tobytes())
    digest.update("\n".join(recipes).encode())
    return digest.hexdigest()
