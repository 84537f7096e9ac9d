"""Fast 1D azimuthal integration with all static corrections folded into one sparse matrix.

pyFAI's CSR engine (``integrate1d`` with method ``("bbox", "csr", "cython")``) computes,
per q bin ``b`` with sparse pixel-splitting coefficients ``c_bi``::

    signal_b = sum_i c_bi (x_i - dark_i)
    norm_b   = sum_i c_bi (monitor * flat_i * solidangle_i * polarization_i)
    var_b    = sum_i c_bi^2 max(x_i, 1)            # error_model="poisson" (Cython engine)
    I_b      = signal_b / norm_b,   sigma_b = sqrt(var_b) / norm_b   (the "sem")

(note: pyFAI's Cython CSR engine uses ``max(x, 1)`` as the Poisson variance without adding
the dark, measured against pyFAI 2026.9). Everything except ``x`` is static, so
:class:`FoldedIntegrator` precomputes ``norm_b`` and ``sum_i c_bi dark_i`` once (float64); a
frame then costs two independent sparse mat-vecs, ``C x`` and ``C^2 max(x, 1)``, each fed
by one conversion of the frame into its own float32 buffer. The two products run
concurrently on two threads (scipy's sparse kernels and numpy's casts release the GIL), so
a frame costs about one mat-vec of wall time. To keep float32 rounding at ~1e-6, each bin's
row is split into sub-rows of at most :data:`CHUNK` pixels whose float32 partial sums are
added in float64.

Pixels carrying the detector's dummy value (e.g. -1/-2 on a Pilatus) are dropped per frame,
exactly as pyFAI's dynamic mask does. A frame-wide ``min``/``max`` test rules this out for
almost every frame; only when it fails are the statically masked pixels (module gaps, which
may legitimately hold the dummy value) excluded and the exact per-pixel test run, and only
when an unmasked pixel is flagged does the frame take the slower dynamic-mask path.

That is the ``engine="scipy"`` path. The default ``engine="numba"`` (when numba is
importable) replaces it with one fused parallel kernel over a pixel-major (CSC) copy of the
matrix: each pixel is read once, straight from the caller's frame (no conversion buffer),
and its entries add ``c x`` and ``c^2 max(x, 1)`` -- or, for a pixel holding the dummy
value, ``c weight`` and ``c dark``, the terms the dynamic mask removes from the
normalisation and the dark sum -- to float64 per-block bin accumulators that stay in L1
cache. One pass over the matrix and the frame, float64 sums (no chunk splitting), and the
dummy test costs one compare per pixel. The fixed pixel blocks make the result independent
of the thread count.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

from .errors import ReductionError

try:  # optional fast engine
    import numba
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None

__all__ = ["CHUNK", "ENGINES", "FoldedIntegrator", "UNIT", "numba_available"]

logger = logging.getLogger(__name__)

UNIT = "q_A^-1"
CHUNK = 256  # max pixels per float32 partial sum (keeps rounding ~1e-6 on any bin)
ENGINES = ("numba", "scipy")
BLOCKS = 16  # pixel blocks of the numba kernel (fixed: results do not depend on thread count)


def _split_rows(csr: sp.csr_matrix, chunk: int) -> tuple[sp.csr_matrix, NDArray[np.intp]]:
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


def _fused_kernel(blocks, colptr, rows, data, x, weight, dark, has_dark, npt, has_dummy, dummy,
                  delta, round32):  # pragma: no cover - compiled by numba
    """One pass over the pixel-major (CSC) matrix: signal, variance and dummy corrections.

    Returns ``acc`` of shape ``(4, npt)``: ``sum c x``, ``sum c^2 max(x, 1)`` over the pixels
    that do not hold the dummy value, and ``sum c weight``, ``sum c dark`` over those that
    do. Pixel ``j`` is read once (its entries ``colptr[j]:colptr[j+1]`` list the bins it
    feeds), and every block of pixels accumulates in its own float64 buffer (in L1 cache);
    the ``len(blocks) - 1`` buffers are added in a fixed order, so the result does not
    depend on the number of threads.
    """
    nblock = blocks.size - 1
    part = np.empty((nblock, 4 * npt))
    for g in numba.prange(nblock):
        acc = part[g]
        acc[:] = 0.0
        for j in range(blocks[g], blocks[g + 1]):
            lo = colptr[j]
            hi = colptr[j + 1]
            if lo == hi:
                continue  # masked, or outside the q range
            raw = x[j]
            x32 = np.float32(raw)
            if has_dummy and abs(x32 - dummy) <= delta:  # pyFAI's test, in float32
                wj = np.float64(weight[j])
                dj = np.float64(dark[j]) if has_dark else 0.0
                for k in range(lo, hi):
                    c = np.float64(data[k])
                    r = 4 * np.intp(rows[k])
                    acc[r + 2] += c * wj
                    acc[r + 3] += c * dj
                continue
            xv = np.float64(x32) if round32 else np.float64(raw)
            mv = xv if not xv < 1.0 else 1.0  # max(x, 1), NaN stays NaN like np.maximum
            for k in range(lo, hi):
                c = np.float64(data[k])
                r = 4 * np.intp(rows[k])
                acc[r] += c * xv
                acc[r + 1] += c * c * mv
    out = np.zeros(4 * npt)
    for g in range(nblock):
        out += part[g]
    return out.reshape((npt, 4)).T.copy()


def _compile(fn):
    if numba is None:
        return None
    try:
        return numba.njit(parallel=True, fastmath=False, cache=True)(fn)
    except RuntimeError:  # pragma: no cover - no writable cache location
        return numba.njit(parallel=True, fastmath=False)(fn)


_FUSED = _compile(_fused_kernel)
_NUMBA_LOCK = threading.Lock()  # serialises kernel calls if numba runs on "workqueue"
_WARM_DTYPES = (np.int32, np.uint32)  # compiled at construction (detector frame types)


def numba_available() -> bool:
    """Whether the fused numba engine can be used."""
    return _FUSED is not None


def _kernel_frame(flat: NDArray) -> NDArray:
    """The frame as a contiguous, native-endian array of a dtype numba handles."""
    if flat.dtype == np.bool_:
        flat = flat.view(np.uint8)
    elif flat.dtype.kind == "f" and flat.dtype.itemsize < 4:
        flat = flat.astype(np.float32)
    elif not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    return np.ascontiguousarray(flat)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _helper_pool() -> ThreadPoolExecutor:
    """The one helper thread shared by every integrator (computes the variance product)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="folded-integrator")
        return _POOL


def _default_threads() -> int:
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        ncpu = os.cpu_count() or 1
    return 2 if ncpu >= 2 else 1


@dataclass(frozen=True)
class _Dummy:
    value: float
    delta: float


class FoldedIntegrator:
    """Precomputed sparse azimuthal integrator (q in 1/angstrom).

    Parameters
    ----------
    ai
        pyFAI geometry.
    shape
        Frame shape ``(ny, nx)``.
    npt
        Number of q bins.
    q_range
        ``(qmin, qmax)`` in 1/angstrom; fixes the q grid.
    mask
        Pixels to ignore (non-zero = masked), or ``None``.
    dark, flat
        Dark-current and flat-field images, or ``None``.
    polarization_factor
        pyFAI polarization factor, or ``None`` for no correction.
    correct_solid_angle
        Apply pyFAI's (relative) solid-angle correction.
    split
        Pixel splitting, ``"bbox"`` (default, like pyFAI's default) or ``"no"``.
    accumulate
        dtype of the per-frame sparse products. ``"float32"`` (default): float32 matrix and
        frame buffers, each bin summed as float32 partial sums of <= ``CHUNK`` pixels that are
        added in float64 (relative rounding ~1e-6). ``"float64"``: everything in float64
        (slower, exact to ~1e-12).
    threads
        ``2``: the signal and variance products of a frame run concurrently (the calling
        thread plus one helper thread shared by all integrators); ``1``: both run in the
        calling thread. Default: 2 if the process may use at least 2 CPUs, else 1. With the
        numba engine, an explicit value is the number of numba threads used by each call
        (capped by numba's pool), while ``None`` uses numba's default (all its threads).
    engine
        ``"numba"``: one fused parallel kernel reads the frame directly (any integer, float
        or bool dtype, no conversion buffer) and accumulates signal, variance and the
        dummy-pixel corrections in one pass over a pixel-major copy of the matrix, in
        float64 (the frame value is rounded to float32 first when ``accumulate`` is
        ``"float32"``, as pyFAI does). Compiled (or loaded from numba's cache) at
        construction. ``"scipy"``: the two concurrent scipy mat-vecs described above.
        Default (``None``): ``"numba"`` when numba is importable, else ``"scipy"``.

    Notes
    -----
    An instance owns its frame buffers: do not call :meth:`integrate` on the same instance
    from several threads at once.
    """

    def __init__(
        self,
        ai: AzimuthalIntegrator,
        shape: tuple[int, int],
        npt: int,
        q_range: tuple[float, float],
        *,
        mask: ArrayLike | None = None,
        dark: ArrayLike | None = None,
        flat: ArrayLike | None = None,
        polarization_factor: float | None = 0.99,
        correct_solid_angle: bool = True,
        split: str = "bbox",
        accumulate: str = "float32",
        threads: int | None = None,
        engine: str | None = None,
    ) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.npt = int(npt)
        self.q_range = (float(q_range[0]), float(q_range[1]))
        if self.npt < 1:
            raise ReductionError(f"npt must be >= 1, got {npt}")
        if accumulate not in ("float32", "float64"):
            raise ReductionError(f"accumulate must be 'float32' or 'float64', got {accumulate!r}")
        self.threads = _default_threads() if threads is None else int(threads)
        if self.threads not in (1, 2):
            raise ReductionError(f"threads must be 1 or 2, got {threads!r}")
        self.dtype = np.dtype(accumulate)
        if engine is None:
            engine = "numba" if numba_available() else "scipy"
        if engine not in ENGINES:
            raise ReductionError(f"engine must be one of {ENGINES}, got {engine!r}")
        if engine == "numba" and not numba_available():
            raise ReductionError("engine='numba' needs the numba package")
        self.engine = engine
        self._nb_threads = None if threads is None else self.threads
        if not self.q_range[0] < self.q_range[1]:
            raise ReductionError(f"q range must be increasing, got {self.q_range}")
        size = self.shape[0] * self.shape[1]
        mask_arr = self._static_mask(ai, mask, dark, flat)
        engine = ai.setup_sparse_integrator(
            self.shape, self.npt, mask=mask_arr.astype(np.int8), pos0_range=self.q_range,
            unit=UNIT, split=split, algo="CSR", empty=np.nan, scale=True,
        )
        data, indices, indptr = engine.lut
        self.q = np.asarray(engine.bin_centers, dtype=np.float64) * 0.1  # nm^-1 -> A^-1
        exact = sp.csr_matrix((np.asarray(data, dtype=np.float64), indices, indptr),
                              shape=(self.npt, size))
        if self.engine == "numba":
            self._setup_numba(exact)
        else:
            self._setup_scipy(exact)

        weight = np.ones(size, dtype=np.float32)
        if flat is not None:
            weight *= np.asarray(flat, dtype=np.float32).ravel()
        if polarization_factor is not None:
            weight *= ai.polarization(self.shape, polarization_factor).astype(np.float32).ravel()
        if correct_solid_angle:
            weight *= ai.solidAngleArray(self.shape).astype(np.float32).ravel()
        self._weight = weight
        # static sums are computed once, in float64
        self._norm = exact.dot(weight.astype(np.float64))
        self.count = exact.dot(np.ones(size))
        self._dark = None if dark is None else np.asarray(dark, dtype=np.float32).ravel()
        self._cdark = (np.zeros(self.npt) if self._dark is None
                       else exact.dot(self._dark.astype(np.float64)))
        self._empty = self._norm <= 0
        if self.engine == "scipy":
            self._x = np.empty(size, dtype=self.dtype)  # frame, for the signal product
            self._v = np.empty(size, dtype=self.dtype)  # max(frame, 1), for the variance
        self._masked = np.flatnonzero(mask_arr.ravel())
        dummy, delta = ai.detector.dummy, ai.detector.delta_dummy
        self._dummy = None if dummy is None else (float(dummy), delta)
        self.mask = mask_arr
        if self.engine == "numba":
            self._warm_up()
        logger.info("FoldedIntegrator: %d bins, %d nnz, %d masked pixels, %s engine, "
                    "%d thread(s)", self.npt, exact.nnz, int(mask_arr.sum()), self.engine,
                    self.threads)

    def _setup_scipy(self, exact: sp.csr_matrix) -> None:
        if self.dtype == np.float64:
            rows, self._starts = exact, None
        else:
            rows, self._starts = _split_rows(exact, CHUNK)
        self._csr = sp.csr_matrix(
            (rows.data.astype(self.dtype), rows.indices, rows.indptr), shape=rows.shape)
        # C^2 shares C's index arrays (one copy in memory, read by both concurrent products)
        self._csr2 = sp.csr_matrix(
            (self._csr.data * self._csr.data, self._csr.indices, self._csr.indptr),
            shape=rows.shape)

    def _setup_numba(self, exact: sp.csr_matrix) -> None:
        """Pixel-major (CSC) copy of C for the fused kernel, cut into nnz-balanced blocks."""
        csc = exact.tocsc()
        nnz = csc.nnz
        self._nb_data = csc.data.astype(self.dtype)
        self._nb_rows = csc.indices.astype(np.uint16 if self.npt <= 2**16 else np.int32)
        self._nb_colptr = csc.indptr.astype(np.int32 if nnz < 2**31 - 1 else np.int64)
        cuts = np.searchsorted(self._nb_colptr, nnz * np.arange(BLOCKS + 1) / BLOCKS)
        cuts[0], cuts[-1] = 0, csc.shape[1]
        self._nb_blocks = cuts.astype(np.int64)

    def _warm_up(self) -> None:
        """Compile (or load from cache) the kernel for common frame dtypes: no slow 1st frame."""
        empty = np.zeros(2, dtype=np.int64)  # no pixel block: compile only, nothing runs
        for dtype in {*_WARM_DTYPES, np.dtype(self.dtype).type}:
            _FUSED(empty, self._nb_colptr[:2], self._nb_rows[:1], self._nb_data[:1],
                   np.zeros(1, dtype=dtype), self._weight[:1], np.zeros(1, np.float32),
                   False, self.npt, True, np.float32(0), np.float32(0), True)

    def _numba_sums(self, flat: NDArray) -> NDArray[np.float64]:
        """``(4, npt)`` fused sums of one frame (see :func:`_fused_kernel`)."""
        x = _kernel_frame(flat)
        dummy = self._dummy_for(flat.dtype)
        dark = self._dark if self._dark is not None else np.zeros(1, np.float32)
        args = (self._nb_blocks, self._nb_colptr, self._nb_rows, self._nb_data, x,
                self._weight, dark, self._dark is not None, self.npt, dummy is not None,
                np.float32(0 if dummy is None else dummy.value),
                np.float32(0 if dummy is None else dummy.delta), self.dtype == np.float32)
        lock = _NUMBA_LOCK if numba.threading_layer() == "workqueue" else None
        if lock is not None:
            lock.acquire()
        try:
            want = self._nb_threads
            if want is None:
                return _FUSED(*args)
            before = numba.get_num_threads()
            numba.set_num_threads(min(want, numba.config.NUMBA_NUM_THREADS))
            try:
                return _FUSED(*args)
            finally:
                numba.set_num_threads(before)
        finally:
            if lock is not None:
                lock.release()

    def _integrate_numba(self, flat: NDArray, monitor: float) -> tuple[NDArray, NDArray]:
        signal, var, dropped_weight, dropped_dark = self._numba_sums(flat)
        # no dummy pixel: both corrections are exactly 0 and norm/cdark are unchanged
        norm = (self._norm - dropped_weight) * monitor
        return self._finish(signal - (self._cdark - dropped_dark), var, norm)

    def _static_mask(self, ai, mask, dark, flat) -> NDArray[np.bool_]:
        """Union of the user mask and pixels whose dark/flat hold the dummy value."""
        out = np.zeros(self.shape, dtype=bool)
        if mask is not None:
            m = np.asarray(mask)
            if m.shape != self.shape:
                raise ReductionError(f"mask shape {m.shape} does not match frame shape "
                                     f"{self.shape}")
            out |= m.astype(bool)
        for name, arr in (("dark", dark), ("flat", flat)):
            if arr is None:
                continue
            a = np.asarray(arr, dtype=np.float32)
            if a.shape != self.shape:
                raise ReductionError(f"{name} shape {a.shape} does not match frame shape "
                                     f"{self.shape}")
            d, dd = ai.detector.get_dummies(a)
            if d is not None:
                out |= np.abs(a - d) <= dd
            out |= ~np.isfinite(a)
        if flat is not None:
            out |= np.asarray(flat, dtype=np.float32) == 0
        return out

    def _dummy_for(self, dtype: np.dtype) -> _Dummy | None:
        """Dummy value as pyFAI computes it for a frame of this dtype."""
        if self._dummy is None:
            return None
        value = np.float32(np.dtype(dtype).type(np.int64(self._dummy[0])))
        delta = np.finfo(np.float32).eps if self._dummy[1] is None else self._dummy[1]
        return _Dummy(float(value), float(np.float32(delta)))

    def _flagged(self, x: NDArray, dummy: _Dummy | None) -> NDArray | None:
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

    def _finish(self, signal, var, norm) -> tuple[NDArray, NDArray]:
        with np.errstate(divide="ignore", invalid="ignore"):
            intensity = signal / norm
            sigma = np.sqrt(var) / norm
        bad = ~(norm > 0)
        intensity[bad] = np.nan
        sigma[bad] = np.nan
        return intensity, sigma

    def _check(self, frame: ArrayLike) -> NDArray:
        frame = np.asarray(frame)
        if frame.shape != self.shape:
            raise ReductionError(f"frame shape {frame.shape} does not match integrator shape "
                                 f"{self.shape}")
        if not (np.issubdtype(frame.dtype, np.integer) or np.issubdtype(frame.dtype, np.floating)
                or frame.dtype == np.bool_):
            raise ReductionError(f"frame dtype {frame.dtype} is not numeric")
        return frame

    def integrate(self, frame: ArrayLike, monitor: float = 1.0) -> tuple[NDArray, NDArray]:
        """Integrate one frame.

        Parameters
        ----------
        frame
            2D array of raw counts, shape ``self.shape``.
        monitor
            Normalisation factor (pyFAI ``normalization_factor``).

        Returns
        -------
        intensity, sigma
            float64 arrays of length ``npt``; NaN in bins with no pixels.
        """
        frame = self._check(frame)
        flat = frame.reshape(-1)
        if self.engine == "numba":
            return self._integrate_numba(flat, float(monitor))
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
        flagged = self._flagged(x, self._dummy_for(frame.dtype))
        if flagged is not None:
            return self._integrate_dynamic(x, flagged, float(monitor))
        return self._finish(signal - self._cdark, var, self._norm * float(monitor))

    def _integrate_dynamic(self, x: NDArray, flagged: NDArray, monitor: float):
        """Frame with dummy pixels outside the static mask: drop them, like pyFAI does."""
        x = x.copy()
        x[flagged] = 0.0
        fl = flagged.astype(self.dtype)
        norm = (self._norm - self._dot(self._csr, fl * self._weight)) * monitor
        cdark = self._cdark
        if self._dark is not None:
            cdark = cdark - self._dot(self._csr, fl * self._dark)
        signal = self._dot(self._csr, x) - cdark
        np.maximum(x, 1.0, out=x)
        x[flagged] = 0.0
        var = self._dot(self._csr2, x)
        return self._finish(signal, var, norm)

    def integrate_many(
        self, frames: ArrayLike, monitors: ArrayLike | float = 1.0
    ) -> tuple[NDArray, NDArray]:
        """Integrate a stack of frames.

        Each frame goes through the single-frame path (the fused numba kernel, or two
        concurrent scipy mat-vecs): scipy's multi-vector sparse product costs more per frame
        than two single mat-vecs, and feeding it needs a transposed copy of the stack.

        Parameters
        ----------
        frames
            Array ``(n, ny, nx)``.
        monitors
            Scalar or ``n`` normalisation factors.

        Returns
        -------
        intensity, sigma
            Arrays of shape ``(n, npt)``.
        """
        frames = np.asarray(frames)
        if frames.ndim != 3 or frames.shape[1:] != self.shape:
            raise ReductionError(f"frames shape {frames.shape} does not match (n, "
                                 f"{self.shape[0]}, {self.shape[1]})")
        n = frames.shape[0]
        mon = np.broadcast_to(np.asarray(monitors, dtype=np.float64), (n,))
        intensity = np.empty((n, self.npt))
        sigma = np.empty((n, self.npt))
        for k in range(n):
            intensity[k], sigma[k] = self.integrate(frames[k], mon[k])
        return intensity, sigma
