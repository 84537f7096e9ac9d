"""The beamline's model registry: numbered bundles, one of them current, promoted with checks.

A registry is a folder (``scorer.registry`` in ``beamline.yaml``)::

    registry.json        versions (number, folder, sha256 of model.json, when added, where
                         from, recipes, q grid, alpha, calibration size, metrics, the runs
                         and selection it was trained on), the current version, the stack
                         of promotions (for rollback) and a log of every action
    registry.json.hmac   HMAC-SHA256 of registry.json when PBI_MODEL_KEY is set
    v0001/ v0002/ ...    copies of the promoted bundles (model.json.hmac kept: signed
                         bundles stay signed)

:meth:`ModelRegistry.promote` copies a bundle in and makes it current only if it loads (every
hash and signature checked), can flag (its conformal threshold is finite), flags gross
errors (each recipe's mean normal curve scaled by 3 and by 1/3: :mod:`.sanity`) and its q
grid lies inside the beamline's q range; otherwise :class:`RegistryError` says why and the current
model stays. :meth:`ModelRegistry.rollback` returns to the model promoted before.
Scorers ask :meth:`ModelRegistry.current` at each run start (never mid-run). Writes are
atomic (a temporary file renamed) and serialised by a lock file.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbi_bluesky.models.bundle import BundleError, ensure_can_flag, load_bundle, sha256_file
from pbi_bluesky.models.detector import AnomalyDetector
from pbi_bluesky.models.sanity import gross_error_misses
from pbi_bluesky.models.signing import ENV_KEY, model_key

__all__ = ["FORMAT", "ModelRegistry", "RegistryError", "Version", "beamline_q_range"]

FORMAT = "pbi_bluesky.registry"
INDEX = "registry.json"
SIGNATURE = "registry.json.hmac"


class RegistryError(ValueError):
    """A bundle refused at promotion, an unknown version, or a damaged registry."""


@dataclass(frozen=True)
class Version:
    """One registered bundle (a row of ``registry.json``)."""

    number: int
    path: Path
    model_sha256: str
    info: dict[str, Any]


def beamline_q_range(poni: str | Path, *, npt: int = 400, mask: Any = None
                     ) -> tuple[float, float]:
    """Return the q range (1/A) a beamline's reduction measures.

    That is the first and last q bin with unmasked pixels, for its geometry (PONI path or
    text), mask and bins.
    """
    import numpy as np

    from pbi_bluesky.reduction import Reducer, load_geometry_text

    text = Path(poni).read_text() if "\n" not in str(poni) else str(poni)
    reducer = Reducer(load_geometry_text(text), npt=npt, mask=mask, absolute_scale=None)
    q = np.asarray(reducer.q)[np.asarray(reducer.count) > 0]
    return float(q[0]), float(q[-1])


class ModelRegistry:
    """A registry folder (see the module docstring); created on first promotion.

    Parameters
    ----------
    root
        The registry folder.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    # -- reading ----------------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        path = self.root / INDEX
        if not path.is_file():
            return {"format": FORMAT, "versions": [], "current": None, "stack": [], "log": []}
        raw = path.read_bytes()
        key = model_key()
        if key is not None:
            sig = self.root / SIGNATURE
            if not sig.is_file():
                raise RegistryError(f"{path}: no {SIGNATURE}, but {ENV_KEY} is set: an "
                                    "unsigned registry is refused")
            if not hmac.compare_digest(sig.read_text().strip(),
                                       hmac.new(key, raw, hashlib.sha256).hexdigest()):
                raise RegistryError(f"{path} does not match its signature (tampered, or "
                                    "signed with another key)")
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise RegistryError(f"{path} is not a {FORMAT} file")
        return doc

    def _write(self, doc: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        raw = json.dumps(doc, indent=1).encode()
        key = model_key()
        for name, data in ((INDEX, raw), (SIGNATURE, None if key is None else (
                hmac.new(key, raw, hashlib.sha256).hexdigest() + "\n").encode())):
            if data is None:
                continue
            fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=self.root)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.root / name)
        if key is None and (self.root / SIGNATURE).exists():
            (self.root / SIGNATURE).unlink()

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._read()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _version(self, doc: dict[str, Any], number: int) -> Version:
        for row in doc["versions"]:
            if int(row["version"]) == int(number):
                return Version(int(row["version"]), self.root / row["folder"],
                               row["model_sha256"], row)
        known = [int(r["version"]) for r in doc["versions"]]
        raise RegistryError(f"{self.root}: no version {number} (versions: {known or 'none'})")

    def versions(self) -> list[Version]:
        """Every registered bundle, oldest first."""
        doc = self._read()
        return [self._version(doc, int(r["version"])) for r in doc["versions"]]

    def current(self) -> Version | None:
        """Return the current version (``None``: nothing promoted, the shipped model serves)."""
        doc = self._read()
        return None if doc.get("current") is None else self._version(doc, doc["current"])

    def version(self, number: int) -> Version:
        """One version by number."""
        return self._version(self._read(), number)

    def log(self) -> list[dict[str, Any]]:
        """Every promotion, refusal and rollback, oldest first."""
        return list(self._read().get("log", []))

    def load(self, version: Version | None = None) -> AnomalyDetector:
        """Load a version (default: the current one) for scoring, checked.

        Its model.json must still have the sha256 registered; ``model_info`` then names the version.
        """
        version = version or self.current()
        if version is None:
            raise RegistryError(f"{self.root}: no model promoted yet")
        found = sha256_file(version.path / "model.json")
        if found != version.model_sha256:
            raise RegistryError(f"{version.path}/model.json changed since it was registered "
                                f"(sha256 {found[:12]} != {version.model_sha256[:12]})")
        model = load_bundle(version.path)
        model.bundle_info["registry"] = str(self.root)
        model.bundle_info["registry_version"] = version.number
        model.bundle_info["origin"] = "registry"
        return model

    # -- changing ---------------------------------------------------------------------------
    def check(self, bundle: str | Path, q_range: tuple[float, float] | None = None
              ) -> AnomalyDetector:
        """Return the bundle loaded, if it may become current.

        Else raise :class:`RegistryError`: it fails to load (hashes, signature, format),
        cannot flag, does not flag gross errors (:func:`.sanity.gross_error_misses`), or its
        q grid is not inside ``q_range`` (the beamline's measured range).
        """
        try:
            model = load_bundle(bundle, for_scoring=False)
        except BundleError as exc:
            raise RegistryError(f"refused: {bundle} does not load: {exc}") from exc
        try:
            ensure_can_flag(model)
        except BundleError as exc:
            raise RegistryError(f"refused: {exc}") from exc
        misses = gross_error_misses(model)
        if misses:
            raise RegistryError(
                f"refused: {bundle} does not flag {len(misses)} gross error(s), a recipe's "
                "mean normal curve scaled by 3 or 1/3 (" + "; ".join(misses) + "): it would "
                "pass real defects as normal. Train it on more normals per recipe (or, at "
                "a cross-conformal calibration, a larger alpha).")
        if q_range is not None:
            lo, hi = q_range
            g = model.grid
            if g.q_min < lo * (1 - 1e-9) or g.q_max > hi * (1 + 1e-9):
                raise RegistryError(
                    f"refused: {bundle} scores q = {g.q_min:.4g}..{g.q_max:.4g} 1/A but this "
                    f"beamline measures q = {lo:.4g}..{hi:.4g} 1/A: every frame would fail "
                    "(retrain with --qmin/--qmax inside the beamline's range)")
        return model

    def promote(self, bundle: str | Path | int, *, q_range: tuple[float, float] | None = None,
                note: str = "") -> Version:
        """Make a bundle (a folder, or the number of a registered version) current.

        A folder is checked (:meth:`check`), copied in as the next version and made current.
        A refusal is logged and raised; the current model stays.

        Raises
        ------
        RegistryError
            Why the bundle was refused.
        """
        with self._locked() as doc:
            try:
                if isinstance(bundle, int) or str(bundle).isdigit():
                    version = self._version(doc, int(bundle))
                    self.check(version.path, q_range)
                    doc["stack"].append(version.number)
                    action = {"action": "promote", "version": version.number}
                else:
                    version = self._add(doc, Path(bundle), q_range, note)
                    action = {"action": "promote", "version": version.number,
                              "source": str(Path(bundle).resolve())}
            except RegistryError as exc:
                doc["log"].append({"action": "refused", "at": _now(), "bundle": str(bundle),
                                   "reason": str(exc)})
                self._write(doc)
                raise
            doc["log"].append({**action, "at": _now(), "previous": doc.get("current")})
            doc["current"] = version.number
            self._write(doc)
            return version

    def _add(self, doc: dict[str, Any], bundle: Path, q_range, note: str) -> Version:
        model = self.check(bundle, q_range)
        number = max([int(r["version"]) for r in doc["versions"]], default=0) + 1
        folder = f"v{number:04d}"
        target = self.root / folder
        if target.exists():
            shutil.rmtree(target)  # a copy left by an interrupted promotion
        shutil.copytree(bundle, target)
        self.check(target, q_range)  # the copy, hashes and signature included
        meta = json.loads((target / "model.json").read_text())
        cal = model.calibration_summary()
        row = {
            "version": number, "folder": folder,
            "model_sha256": sha256_file(target / "model.json"),
            "added_at": _now(), "source": str(bundle.resolve()), "note": note,
            "recipes": list(model.recipes), "alpha": model.alpha,
            "q_grid": meta.get("q_grid"),
            "calibration": {k: cal.get(k) for k in ("method", "n_calibration", "threshold",
                                                    "smallest_p")},
            "metrics": meta.get("metrics", {}),
            "training_source": meta.get("training_source"),
            "training_runs": meta.get("training_runs", []),
            "training_manifest": meta.get("training_manifest"),
            "signed": (target / "model.json.hmac").is_file(),
        }
        doc["versions"].append(row)
        doc["stack"].append(number)
        return self._version(doc, number)

    def rollback(self) -> Version | None:
        """Return to the model current before the last promotion.

        Returns its version (``None``: back to the shipped model). Raises
        :class:`RegistryError` when nothing was promoted.
        """
        with self._locked() as doc:
            if not doc["stack"]:
                raise RegistryError(f"{self.root}: nothing to roll back (no promotion)")
            left = doc["stack"].pop()
            doc["current"] = doc["stack"][-1] if doc["stack"] else None
            doc["log"].append({"action": "rollback", "at": _now(), "from": left,
                               "version": doc["current"]})
            self._write(doc)
            return None if doc["current"] is None else self._version(doc, doc["current"])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
