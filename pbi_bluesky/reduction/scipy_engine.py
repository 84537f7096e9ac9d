"""The scipy engine of :class:`~.integrator.FoldedIntegrator` (the fallback without numba).

Per frame: two independent sparse mat-vecs, ``C x`` and ``C^2 max(x, 1)``, each fed by one
conversion of the frame into its own float32 buffer, running concurrently on two threads
(scipy's sparse kernels and numpy's casts release the GIL), so a frame costs about one
mat-vec of wall time. To keep float32 rounding at ~1e-6, each bin's row is split into
sub-rows of at most :data:`CHUNK` pixels whose float32 partial sums are added in float64.

Pixels carrying the detector's dummy value are dropped per frame, as pyFAI's dynamic mask
does: a frame-wide ``min``/``max`` test rules this out for almost every frame; only when it
fails are the statically masked pixels excluded and the exact per-pixel test run.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

__all__ = ["CHUNK", "Dummy", "ScipyEngine", "split_rows"]

CHUNK = 256  # max pixels per float32 partial sum (keeps rounding ~1e-6 on any bin)


@dataclass(frozen=True)
class Dummy:
    """Dummy value and tolerance of a frame's dtype, as pyFAI computes them."""

    value: float
    delta: float


def split_rows(csr: sp.csr_matrix, chunk: int) -> tuple[sp.csr_matrix, NDArray[np.intp]]:
    """Split every row of ``csr`` into sub-rows of at most ``chunk`` non-zeros.

    Returns the split matrix and, for every row, the index of its first sub-row, so that
    ``np.add.reduceat(A_split @ x, starts, dtype=float64)`` equals ``A @ x`` computed with
    short float32 partial sums. Every row (also an empty one) owns at least one sub-row, so
    ``starts`` is strictly increasing.
    """
    lengths = np.diff(csr.indptr).astype(np.int64)
    pieces = np.maximum(1, -(-lengths // chunk))  # ceil, at least one sub-row per row
    starts = np.concatenate(([0], np.cumsum(pieces)[:-1])).astype(np.intp)
    owner = np.repeat(np.arange(csr.shape[0]), pieces)
    rank = np.arange(owner.size) - starts[owner]
    sub_ptr = np.minimum(csr.indptr[:-1][owner] + rank * chunk, csr.indptr[1:][owner])
    indptr = np.append(sub_ptr.astype(np.int64), csr.indptr[-1])
    split = sp.csr_matrix((csr.data, csr.indices, indptr), shape=(owner.size, csr.shape[1]))
    return split, starts


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _helper_pool() -> ThreadPoolExecutor:
    """Return the one helper thread shared by every engine (computes the variance product)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="folded-integrator")
        return _POOL


class ScipyEngine:
    """Per-frame sums with scipy sparse mat-vecs.

    Parameters
    ----------
    exact
        The operator as a float64 bins x pixels CSR matrix.
    weight, dark
        Static pixel weight and dark (float32, flat), dark may be ``None``.
    masked
        Flat indices of the statically masked pixels.
    dtype
        ``float32`` (chunked partial sums) or ``float64``.
    threads
        1 or 2 (variance product on the helper thread).
    """

    name = "scipy"

    def __init__(self, exact: sp.csr_matrix, weight: NDArray, dark: NDArray | None,
                 masked: NDArray, dtype: np.dtype, threads: int) -> None:
        self.dtype = np.dtype(dtype)
        self.threads = threads
        if self.dtype == np.float64:
            rows, self._starts = exact, None
        else:
            rows, self._starts = split_rows(exact, CHUNK)
        self._csr = sp.csr_matrix((rows.data.astype(self.dtype), rows.indices, rows.indptr),
                                  shape=rows.shape)
        # C^2 shares C's index arrays (one copy in memory, read by both concurrent products)
        self._csr2 = sp.csr_matrix(
            (self._csr.data * self._csr.data, self._csr.indices, self._csr.indptr),
            shape=rows.shape)
        size = exact.shape[1]
        self._weight = weight
        self._dark = dark
        self._masked = masked
        self._x = np.empty(size, dtype=self.dtype)  # frame, for the signal product
        self._v = np.empty(size, dtype=self.dtype)  # max(frame, 1), for the variance
        self.npt = exact.shape[0]

    def _dot(self, matrix: sp.csr_matrix, x: NDArray) -> NDArray[np.float64]:
        """``matrix @ x`` folded back to one value per bin, as float64."""
        partial = matrix.dot(x)
        if self._starts is None:
            return np.asarray(partial, dtype=np.float64)
        return np.add.reduceat(partial, self._starts, dtype=np.float64)

    def _variance_sum(self, flat: NDArray) -> NDArray[np.float64]:
        """``C^2 max(frame, 1)``: one cast of the frame into the variance buffer, one mat-vec."""
        v = self._v
        np.copyto(v, flat, casting="unsafe")
        np.maximum(v, 1, out=v)
        return self._dot(self._csr2, v)

    def _flagged(self, x: NDArray, dummy: Dummy | None) -> NDArray | None:
        """Mask of unmasked pixels holding the dummy value, or ``None`` when there are none.

        May overwrite the statically masked pixels of ``x`` (the matrix never reads them).
        """
        if dummy is None:
            return None
        slack = 4 * np.finfo(np.float32).eps * abs(dummy.value)  # float32 rounding margin
        lo, hi = dummy.value - dummy.delta - slack, dummy.value + dummy.delta + slack
        # fast path: no pixel at all can hold the dummy (NaN fails both tests)
        if hi < 0 and x.min() > hi:
            return None
        if lo > 0 and x.max() < lo:
            return None
        # module gaps etc. may legitimately hold the dummy: NaN is never flagged
        x[self._masked] = np.nan
        # exact test in float32, as pyFAI's preprocessing does
        x32 = x.astype(np.float32, copy=False)
        flagged = np.abs(x32 - np.float32(dummy.value)) <= np.float32(dummy.delta)
        return flagged if flagged.any() else None

    def sums(self, flat: NDArray, dummy: Dummy | None) -> NDArray[np.float64]:
        """``(4, npt)``: signal, variance, dropped weight, dropped dark of one frame."""
        pending: Future | None = None
        if self.threads > 1:
            pending = _helper_pool().submit(self._variance_sum, flat)
        try:
            x = self._x
            np.copyto(x, flat, casting="unsafe")  # the frame's only conversion for the signal
            signal = self._dot(self._csr, x)
        finally:
            var = pending.result() if pending is not None else None
        if var is None:
            var = self._variance_sum(flat)
        flagged = self._flagged(x, dummy)
        if flagged is not None:
            return self._dynamic(x, flagged)
        zero = np.zeros(self.npt)
        return np.stack([signal, var, zero, zero])

    def _dynamic(self, x: NDArray, flagged: NDArray) -> NDArray[np.float64]:
        """Frame with dummy pixels outside the static mask: drop them, like pyFAI does."""
        x = x.copy()
        x[flagged] = 0.0
        fl = flagged.astype(self.dtype)
        dropped_w = self._dot(self._csr, fl * self._weight)
        dropped_d = (np.zeros(self.npt) if self._dark is None
                     else self._dot(self._csr, fl * self._dark))
        signal = self._dot(self._csr, x)
        np.maximum(x, 1.0, out=x)
        x[flagged] = 0.0
        var = self._dot(self._csr2, x)
        return np.stack([signal, var, dropped_w, dropped_d])

    def sums_many(self, stack: NDArray, dummy: Dummy | None) -> NDArray[np.float64]:
        """Return the ``(n, 4, npt)`` sums of a ``(n, pixels)`` stack, frame by frame.

        Frame by frame because scipy's multi-vector product costs more per frame than two
        single mat-vecs and needs a transposed copy.
        """
        return np.stack([self.sums(row, dummy) for row in stack])
