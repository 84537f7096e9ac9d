"""On-disk cache of folded operators: the one-off build (about 1 s) is paid once per setup.

An entry is one ``.npz`` file named by a blake2b hash of everything the operator depends on:
the geometry (PONI content), frame shape, number of bins, q range, splitting, the
polarisation factor, the solid-angle switch, the static mask, dark and flat images, the
detector's dummy value, the pyFAI version and :data:`FORMAT`. The same key is stored inside
the file and compared on load, so a renamed or foreign file is rejected.

* Location: ``$PBI_OPERATOR_CACHE`` if set (``off``, ``0`` or ``none`` disables caching),
  else ``<user cache dir>/pbi_bluesky/operators`` (``platformdirs``, e.g.
  ``~/.cache/pbi_bluesky/operators``): never inside the source tree.
* Writes are atomic: a temporary file in the same folder, then ``os.replace``.
* Reads use ``numpy.load(..., allow_pickle=False)``; every array is checked (dtype, length,
  index ranges, finiteness). A file that fails any check is reported with a warning and
  rebuilt, never trusted. Only the newest :data:`MAX_ENTRIES` entries are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ReductionError

__all__ = ["ENV_VAR", "FORMAT", "OperatorCache", "cache_key", "default_cache_dir"]

logger = logging.getLogger(__name__)

ENV_VAR = "PBI_OPERATOR_CACHE"
FORMAT = "pbi_bluesky.folded_operator.v1"
MAX_ENTRIES = 32
_OFF = {"", "0", "off", "none", "false", "no"}


def default_cache_dir() -> Path | None:
    """Return the cache folder from ``$PBI_OPERATOR_CACHE`` or the user cache dir.

    ``None`` means the cache is off.
    """
    env = os.environ.get(ENV_VAR)
    if env is not None:
        if env.strip().lower() in _OFF:
            return None
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("pbi_bluesky")) / "operators"


def _digest_array(h: Any, name: str, arr: NDArray | None) -> None:
    h.update(name.encode())
    if arr is None:
        h.update(b"<none>")
        return
    a = np.ascontiguousarray(arr)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))


def cache_key(settings: dict[str, Any], arrays: dict[str, NDArray | None]) -> tuple[str, str]:
    """``(hex digest, canonical JSON of the settings)`` for an operator."""
    text = json.dumps({"format": FORMAT, **settings}, sort_keys=True, default=str)
    h = hashlib.blake2b(digest_size=20)
    h.update(text.encode())
    for name in sorted(arrays):
        _digest_array(h, name, arrays[name])
    return h.hexdigest(), text


class OperatorCache:
    """A folder of cached operators.

    Parameters
    ----------
    folder
        Where the ``.npz`` files live (created on first write).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        """Return the file that holds the arrays stored under ``key``."""
        return self.folder / f"op-{key}.npz"

    def load(self, key: str, settings_text: str) -> dict[str, NDArray] | None:
        """Return the arrays stored under ``key``, or ``None`` if absent or unusable (warned)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            meta = str(arrays.pop("meta")[()])
            if meta != settings_text:
                raise ReductionError("settings stored in the file differ from its key")
        except Exception as exc:  # noqa: BLE001 - any unreadable file is rebuilt
            logger.warning("folded-operator cache file %s is unusable (%s); rebuilding it",
                           path, exc)
            return None
        try:
            os.utime(path)  # recently used: kept by the pruning
        except OSError:  # pragma: no cover - read-only cache
            pass
        return arrays

    def store(self, key: str, settings_text: str, arrays: dict[str, NDArray]) -> Path | None:
        """Write the arrays under ``key`` atomically.

        Returns the path, or ``None`` (warned) if the folder is not writable -- a cache that
        cannot be written never stops a reduction.
        """
        path = self.path(key)
        tmp: str | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".op-", suffix=".tmp", dir=self.folder)
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, meta=np.array(settings_text), **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            logger.warning("cannot write the folded-operator cache %s: %s", path, exc)
            return None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        self._prune()
        return path

    def _prune(self) -> None:
        try:
            entries = sorted(self.folder.glob("op-*.npz"), key=lambda p: p.stat().st_mtime,
                             reverse=True)
            for old in entries[MAX_ENTRIES:]:
                old.unlink(missing_ok=True)
        except OSError:  # pragma: no cover - a concurrent prune
            pass
