"""numba kernels over the compact operator (see :mod:`.operator`).

One pass over the frame and the 4-byte-per-pixel operator code. For a regular pixel of
first bin ``b`` and fraction ``f`` the kernel adds ``x, f x, m, f m, f^2 m`` (``m = max(x,
1)``) to row ``b`` of a float64 accumulator of its pixel block (``(npt + 1) x 8`` doubles,
32 KiB at 500 bins: it stays in L1/L2 cache); a pixel holding the detector's dummy value
instead adds its weight and dark (for the normalisation and dark sums it must leave) to a
separate, rarely touched array; exception pixels (:mod:`.operator`) are added exactly
after the parallel loop. The pixel blocks are fixed (:data:`BLOCKS`) and summed in a fixed
order, so results do not depend on the number of threads.

The batch kernel reads the operator code of a pixel once and applies it to every frame of
a chunk: the operator is read once per chunk instead of once per frame, and the frames'
independent accumulators give the CPU more independent additions to overlap.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.typing import NDArray

from .operator import CompactOperator, unfold

try:  # optional fast engine
    import numba
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None

__all__ = ["BATCH_CHUNK", "BLOCKS", "NumbaEngine", "available"]

BLOCKS = 16  # pixel blocks (fixed: results independent of the thread count)
INV_SCALE = 1.0 / 65535.0
BATCH_CHUNK = 8  # frames per pass of the batch kernel (8 x 32 KiB accumulators: L2)


def _frame_block(lo, hi, elo, ehi, code, x, dlo, dhi, round32, weight, dark, ex_pixel,
                 ex_ptr, ex_bin, ex_coef, acc, aux):  # pragma: no cover - numba
    """Add pixels ``lo:hi`` (and exception pixels ``elo:ehi``) of one frame to a block.

    The block's accumulators are zeroed here.

    ``acc`` is ``(npt + 1) * 8`` doubles: per first bin ``x, f x, m, f m, f^2 m``. ``aux``
    is ``(npt + 1) * 8`` too: slots 0-3 hold weight, f weight, dark, f dark of regular
    pixels holding the dummy value (by first bin), slots 4-7 the exception pixels' signal,
    variance, dropped weight and dropped dark (by bin). ``dlo is None`` (no dummy test)
    and ``round32 is None`` (no float32 rounding) are pruned at compile time.
    """
    acc[:] = 0.0
    aux[:] = 0.0
    for j in range(np.uint64(lo), np.uint64(hi)):  # unsigned: no wraparound code
        c = code[j]
        b = c & 0xFFFF
        if b == 0xFFFF:
            continue
        raw = x[j]
        x32 = np.float32(raw)
        fr = np.float64(c >> 16) * INV_SCALE
        if dlo is not None and x32 <= dhi and x32 >= dlo:  # = pyFAI's float32 test
            wj = np.float64(weight[j])
            dj = np.float64(dark[j]) if dark is not None else 0.0
            o = 8 * b
            aux[o] += wj
            aux[o + 1] += fr * wj
            aux[o + 2] += dj
            aux[o + 3] += fr * dj
            continue
        xv = np.float64(raw) if round32 is None else np.float64(x32)
        mv = xv if not xv < 1.0 else 1.0  # max(x, 1); NaN stays NaN like np.maximum
        fm = fr * mv
        o = 8 * b
        acc[o] += xv
        acc[o + 1] += fr * xv
        acc[o + 2] += mv
        acc[o + 3] += fm
        acc[o + 4] += fr * fm
    for k in range(elo, ehi):
        j = ex_pixel[k]
        raw = x[j]
        x32 = np.float32(raw)
        if dlo is not None and x32 <= dhi and x32 >= dlo:
            wj = np.float64(weight[j])
            dj = np.float64(dark[j]) if dark is not None else 0.0
            for e in range(ex_ptr[k], ex_ptr[k + 1]):
                cf = np.float64(ex_coef[e])
                o = 8 * np.intp(ex_bin[e])
                aux[o + 6] += cf * wj
                aux[o + 7] += cf * dj
            continue
        xv = np.float64(raw) if round32 is None else np.float64(x32)
        mv = xv if not xv < 1.0 else 1.0
        for e in range(ex_ptr[k], ex_ptr[k + 1]):
            cf = np.float64(ex_coef[e])
            o = 8 * np.intp(ex_bin[e])
            aux[o + 4] += cf * xv
            aux[o + 5] += cf * cf * mv


def _batch_block(lo, hi, elo, ehi, code, xs, dlo, dhi, round32, weight, dark, ex_pixel,
                 ex_ptr, ex_bin, ex_coef, acc, aux):  # pragma: no cover - numba
    """Run :func:`_frame_block` for a ``(n, pixels)`` stack.

    The code of a pixel is read once and applied to every frame; ``acc`` / ``aux`` have
    one row per frame.
    """
    acc[:] = 0.0
    aux[:] = 0.0
    nf = xs.shape[0]
    for j in range(np.uint64(lo), np.uint64(hi)):  # unsigned: no wraparound code
        c = code[j]
        b = c & 0xFFFF
        if b == 0xFFFF:
            continue
        fr = np.float64(c >> 16) * INV_SCALE
        o = 8 * b
        for t in range(nf):
            raw = xs[t, j]
            x32 = np.float32(raw)
            if dlo is not None and x32 <= dhi and x32 >= dlo:
                wj = np.float64(weight[j])
                dj = np.float64(dark[j]) if dark is not None else 0.0
                aux[t, o] += wj
                aux[t, o + 1] += fr * wj
                aux[t, o + 2] += dj
                aux[t, o + 3] += fr * dj
                continue
            xv = np.float64(raw) if round32 is None else np.float64(x32)
            mv = xv if not xv < 1.0 else 1.0
            fm = fr * mv
            acc[t, o] += xv
            acc[t, o + 1] += fr * xv
            acc[t, o + 2] += mv
            acc[t, o + 3] += fm
            acc[t, o + 4] += fr * fm
    for k in range(elo, ehi):
        j = ex_pixel[k]
        for t in range(nf):
            raw = xs[t, j]
            x32 = np.float32(raw)
            if dlo is not None and x32 <= dhi and x32 >= dlo:
                wj = np.float64(weight[j])
                dj = np.float64(dark[j]) if dark is not None else 0.0
                for e in range(ex_ptr[k], ex_ptr[k + 1]):
                    cf = np.float64(ex_coef[e])
                    o = 8 * np.intp(ex_bin[e])
                    aux[t, o + 6] += cf * wj
                    aux[t, o + 7] += cf * dj
                continue
            xv = np.float64(raw) if round32 is None else np.float64(x32)
            mv = xv if not xv < 1.0 else 1.0
            for e in range(ex_ptr[k], ex_ptr[k + 1]):
                cf = np.float64(ex_coef[e])
                o = 8 * np.intp(ex_bin[e])
                aux[t, o + 4] += cf * xv
                aux[t, o + 5] += cf * cf * mv


def _finish(part, aux, npt):  # pragma: no cover - numba
    """Add each frame's blocks in a fixed order.

    Returns ``(n, npt + 1, 8)`` per-first-bin sums and ``(n, 4, npt)`` extras: exception
    signal, exception variance, dropped weight, dropped dark (the dummy drops of regular
    pixels split over their two bins).

    ``part`` and ``aux`` are ``(nblock, n, (npt + 1) * 8)``: ``n`` frames of a chunk, or
    one (``part[:, None]``) for a single frame, so both paths share this code and give the
    same numbers bit for bit.
    """
    width = (npt + 1) * 8
    nf = part.shape[1]
    sums = np.zeros((nf, width))
    extra = np.zeros((nf, 4, npt))
    tot = np.zeros(width)
    for t in range(nf):
        tot[:] = 0.0
        for g in range(part.shape[0]):  # explicit loops: no temporary arrays
            for i in range(width):
                sums[t, i] += part[g, t, i]
                tot[i] += aux[g, t, i]
        for b in range(npt):
            o = 8 * b
            extra[t, 0, b] = tot[o + 4]
            extra[t, 1, b] = tot[o + 5]
            extra[t, 2, b] = tot[o + 1] + tot[o + 6]
            extra[t, 3, b] = tot[o + 3] + tot[o + 7]
            if b > 0:  # 1 - f of bin b - 1's dummy pixels
                extra[t, 2, b] += tot[o - 8] - tot[o - 7]
                extra[t, 3, b] += tot[o - 6] - tot[o - 5]
    return sums.reshape((nf, npt + 1, 8)), extra


def _compile(fn):
    if numba is None:
        return None
    try:
        return numba.njit(nogil=True, fastmath=False, cache=True)(fn)
    except RuntimeError:  # pragma: no cover - no writable cache location
        return numba.njit(nogil=True, fastmath=False)(fn)


_FRAME = _compile(_frame_block)
_BATCH = _compile(_batch_block)
_FINISH = _compile(_finish)
WARM_DTYPES = (np.int32, np.uint32)  # compiled at construction (detector frame types)


def available() -> bool:
    """Whether numba (and so these kernels) can be used."""
    return _FRAME is not None


def kernel_frame(flat: NDArray) -> NDArray:
    """``flat`` as a contiguous, native-endian array of a dtype numba handles."""
    if flat.dtype == np.bool_:
        flat = flat.view(np.uint8)
    elif flat.dtype.kind == "f" and flat.dtype.itemsize < 4:
        flat = flat.astype(np.float32)
    elif not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    return np.ascontiguousarray(flat)


def dummy_bounds(value: float, delta: float) -> tuple[np.float32, np.float32]:
    """Return float32 bounds equivalent to pyFAI's dummy test.

    ``[lo, hi]`` with ``lo <= v <= hi`` exactly when pyFAI's float32 test
    ``abs(v - value) <= delta`` holds (``v`` float32; NaN fails both).

    ``|fl32(v - value)|`` is monotone on each side of ``value``, so the accepted values form
    an interval; its ends lie within a few ulps of ``value -+ delta`` and are found by
    stepping over the neighbouring float32 numbers.
    """
    d = np.float32(value)
    dd = np.float32(delta)

    def ok(v):
        with np.errstate(over="ignore", invalid="ignore"):
            return np.abs(np.float32(v) - d) <= dd

    def edge(start: np.float32, toward: float) -> np.float32:
        # walk from just outside the boundary inwards until accepted, then keep that value
        v = np.float32(start)
        for _ in range(8):  # step a few ulps outwards first
            v = np.nextafter(v, np.float32(-toward * np.inf))
        for _ in range(64):
            if ok(v):
                return v
            v = np.nextafter(v, np.float32(toward * np.inf))
        return d  # pragma: no cover - the dummy itself is always accepted

    if not ok(d):  # negative or NaN delta: nothing matches
        return np.float32(np.inf), np.float32(-np.inf)
    return (edge(np.float32(np.float64(d) - np.float64(dd)), 1.0),
            edge(np.float32(np.float64(d) + np.float64(dd)), -1.0))


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _helper() -> ThreadPoolExecutor:
    """Return the one helper thread shared by every engine (process-wide, started on first use)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="folded-kernel")
        return _POOL


def run_units(count: int, fn, threads: int) -> None:
    """Call ``fn(u)`` for ``u in range(count)`` on up to two threads.

    The calling thread and, with ``threads == 2``, the shared helper thread take the next
    unit as they become free.

    No thread waits for work another has not started: when the caller runs out of units
    and the helper never picked the job up (busy for another engine), the job is
    cancelled. Each unit writes its own accumulator, so the result does not depend on
    which thread ran which unit. Exceptions from either thread propagate.
    """
    if threads < 2 or count < 2:
        for u in range(count):
            fn(u)
        return
    counter = itertools.count()

    def work() -> None:
        for u in counter:  # next() on itertools.count is atomic under the GIL
            if u >= count:
                return
            fn(u)

    future = _helper().submit(work)
    try:
        work()
    finally:
        if not future.cancel():
            future.result()


class NumbaEngine:
    """Per-frame and batch sums with the compiled kernels, on 1 or 2 threads.

    Parameters
    ----------
    op
        The compact operator.
    weight, dark
        Static pixel weight and dark (float32, flat); dark may be ``None``.
    round32
        Round frame values to float32 first, as pyFAI does.
    threads
        1 or 2 threads per call (the caller and the shared helper thread).
    chunk
        Frames per pass of the batch kernel.
    """

    name = "numba"

    def __init__(self, op: CompactOperator, weight: NDArray, dark: NDArray | None,
                 round32: bool, threads: int, chunk: int = BATCH_CHUNK) -> None:
        if not available():
            raise RuntimeError("the numba engine needs the numba package")
        self.npt = op.npt
        # blocks balanced by the pixels the main loop actually visits
        visited = np.cumsum(op.regular)
        cuts = np.searchsorted(visited, visited[-1] * np.arange(BLOCKS + 1) / BLOCKS)
        cuts[0], cuts[-1] = 0, op.size
        ecuts = np.searchsorted(op.ex_pixel, cuts)  # exception pixels of each block
        self._bounds = [(int(a), int(b), int(c), int(d)) for a, b, c, d in
                        zip(cuts[:-1], cuts[1:], ecuts[:-1], ecuts[1:], strict=True)]
        self._code = op.code
        self._ex = (op.ex_pixel, op.ex_ptr, op.ex_bin, op.ex_coef)
        self._weight = weight
        self._dark = dark
        self.round32 = bool(round32)
        self.threads = int(threads)
        self.chunk = max(1, int(chunk))
        width = op.npt + 1
        self._part = np.empty((BLOCKS, 8 * width))
        self._aux = np.empty((BLOCKS, 8 * width))
        self._bounds_cache: dict[tuple[float, float], tuple] = {}

    def warm_up(self, dtypes=WARM_DTYPES, dummy=None) -> None:
        """Compile (or load from numba's cache) the kernels, so no first frame is slow.

        Kernels are built for frames of ``dtypes`` and this engine's settings;
        ``dummy(dtype)`` gives the dummy.
        """
        for dtype in dtypes:
            corr = self._corr(dummy(dtype) if dummy is not None else None)
            x = np.zeros(self._code.size, dtype=dtype)
            _FRAME(0, 0, 0, 0, self._code, x, *corr, *self._ex, self._part[0], self._aux[0])
            _BATCH(0, 0, 0, 0, self._code, x[None], *corr, *self._ex, self._part[:1],
                   self._aux[:1])
        self._part[:] = 0.0
        _FINISH(self._part[:, None], self._part[:, None], self.npt)

    def _corr(self, dummy) -> tuple:
        """Return the kernel arguments of the per-frame corrections.

        ``None`` removes a branch from the compiled loop (numba prunes ``is None`` tests on
        arguments).
        """
        if dummy is None:
            lo = hi = None
        else:
            key = (dummy.value, dummy.delta)
            if key not in self._bounds_cache:
                self._bounds_cache[key] = dummy_bounds(dummy.value, dummy.delta)
            lo, hi = self._bounds_cache[key]
        return (lo, hi, True if self.round32 else None, self._weight, self._dark)

    def sums(self, flat: NDArray, dummy) -> NDArray[np.float64]:
        """``(4, npt)``: signal, variance, dropped weight, dropped dark of one frame."""
        x = kernel_frame(flat)
        args = (self._code, x, *self._corr(dummy), *self._ex)
        part, aux, bounds = self._part, self._aux, self._bounds

        def unit(g: int) -> None:
            _FRAME(*bounds[g], *args, part[g], aux[g])

        run_units(BLOCKS, unit, self.threads)
        sums, extra = _FINISH(part[:, None], aux[:, None], self.npt)
        return self._assemble(sums[0], extra[0])

    @staticmethod
    def _assemble(sums: NDArray, extra: NDArray) -> NDArray:
        signal, var = unfold(sums[:, :5])
        extra[0] += signal
        extra[1] += var
        return extra

    def sums_many(self, stack: NDArray, dummy) -> NDArray[np.float64]:
        """``(n, 4, npt)`` for a ``(n, pixels)`` stack, :attr:`chunk` frames per pass.

        Work units are (chunk, block) pairs shared by both threads, so there is one wait
        for the other thread per call, not one per frame.
        """
        n = stack.shape[0]
        corr = self._corr(dummy)
        bounds = self._bounds
        chunks = [kernel_frame(stack[lo:lo + self.chunk]) for lo in range(0, n, self.chunk)]
        width = 8 * (self.npt + 1)
        parts = [np.empty((BLOCKS, c.shape[0], width)) for c in chunks]
        auxes = [np.empty((BLOCKS, c.shape[0], width)) for c in chunks]

        def unit(u: int) -> None:
            k, g = divmod(u, BLOCKS)
            _BATCH(*bounds[g], self._code, chunks[k], *corr, *self._ex, parts[k][g],
                   auxes[k][g])

        run_units(len(chunks) * BLOCKS, unit, self.threads)
        out = np.empty((n, 4, self.npt))
        row = 0
        for xs, part, aux in zip(chunks, parts, auxes, strict=True):
            sums, extra = _FINISH(part, aux, self.npt)
            signal, var = unfold(sums[..., :5])
            extra[:, 0] += signal
            extra[:, 1] += var
            out[row:row + xs.shape[0]] = extra
            row += xs.shape[0]
        return out
