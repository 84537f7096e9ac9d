"""Fast 1D azimuthal integration with all static corrections folded into one sparse operator.

pyFAI's CSR engine (``integrate1d`` with method ``("bbox", "csr", "cython")``) computes,
per q bin ``b`` with sparse pixel-splitting coefficients ``c_bi``::

    signal_b = sum_i c_bi (x_i - dark_i)
    norm_b   = sum_i c_bi (monitor * flat_i * solidangle_i * polarization_i)
    var_b    = sum_i c_bi^2 max(x_i, 1)            # error_model="poisson" (Cython engine)
    I_b      = signal_b / norm_b,   sigma_b = sqrt(var_b) / norm_b   (the "sem")

(pyFAI's Cython CSR engine uses ``max(x, 1)`` as the Poisson variance without adding the
dark, measured against pyFAI 2026.9). Everything except ``x`` is static, so
:class:`FoldedIntegrator` precomputes ``norm_b`` and ``sum_i c_bi dark_i`` once (float64);
a frame then costs the two sums ``C x`` and ``C^2 max(x, 1)``.

The operator ``C`` is kept in the compact pixel-major form of :mod:`.operator` (4 bytes per
pixel: first bin + 16-bit split fraction; pixels that do not fit are kept exactly) and
cached on disk (:mod:`.opcache`), so the one-off pyFAI build (about 1 s) is paid once per
geometry, mask and settings. Three engines compute the per-frame sums from it:

``"numba"`` (default when numba is importable)
    One fused parallel pass over the frame and the operator code (:mod:`.kernels`); the
    batch path reads the operator once for several frames.
``"scipy"``
    Two concurrent scipy CSR mat-vecs (:mod:`.scipy_engine`), the fallback.
``"torch"``
    Batched sparse mat-mat in torch on CUDA when present, else the same code on the CPU
    (:mod:`.torch_engine`).

Pixels carrying the detector's dummy value (e.g. -1/-2 on a Pilatus) are dropped per frame,
exactly as pyFAI's dynamic mask does; statically masked pixels (module gaps, which may
legitimately hold the dummy value) are never read.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyFAI
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

from . import kernels
from .errors import ReductionError
from .opcache import OperatorCache, cache_key, default_cache_dir
from .operator import CompactOperator, compact_from_csr
from .scipy_engine import CHUNK, Dummy, ScipyEngine
from .scipy_engine import split_rows as _split_rows  # noqa: F401 - kept for callers

__all__ = ["CHUNK", "ENGINES", "ENGINE_ENV", "FoldedIntegrator", "UNIT", "numba_available"]

logger = logging.getLogger(__name__)

UNIT = "q_A^-1"
ENGINES = ("numba", "scipy", "torch")
ENGINE_ENV = "PBI_REDUCTION_ENGINE"
"""Environment variable choosing the default engine (``numba``, ``scipy`` or ``torch``)."""


def settle_numexpr() -> None:
    """Import ``blosc2`` (when installed) before pyFAI evaluates numexpr formulas.

    ``blosc2``'s import calls ``numexpr.set_num_threads``; run in one thread while another
    thread is inside ``numexpr.evaluate`` (pyFAI's geometry arrays), both hang for good
    (seen: a session's spool thread importing Tiled's writer while the live scorer built
    its reducer). Importing it here first makes the later import elsewhere a no-op, and a
    concurrent import holds the module lock until its ``set_num_threads`` is done.
    """
    try:
        import blosc2  # noqa: F401
    except ImportError:  # pragma: no cover - blosc2 comes with tiled
        pass


def numba_available() -> bool:
    """Whether the fused numba engine can be used."""
    return kernels.available()


def _default_threads() -> int:
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        ncpu = os.cpu_count() or 1
    return 2 if ncpu >= 2 else 1


def _default_engine() -> str:
    env = os.environ.get(ENGINE_ENV, "").strip().lower()
    if env:
        if env not in ENGINES:
            raise ReductionError(f"${ENGINE_ENV}={env!r}: engine must be one of {ENGINES}")
        return env
    return "numba" if numba_available() else "scipy"


class FoldedIntegrator:
    """Precomputed sparse azimuthal integrator (q in 1/angstrom).

    Parameters
    ----------
    ai
        pyFAI geometry.
    shape
        Frame shape ``(ny, nx)``.
    npt
        Number of q bins (at most 65534).
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
        ``"float32"`` (default): frame values are rounded to float32 first, as pyFAI does
        (numba: sums in float64; scipy: float32 partial sums of <= ``CHUNK`` pixels added in
        float64; torch: float32). ``"float64"``: no rounding, float64 sums everywhere.
    threads
        ``1`` or ``2``: with 2, the calling thread and one helper thread (shared by every
        integrator) split a frame's pixel blocks (numba) or run the signal and variance
        products concurrently (scipy). Default: 2 if the process may use at least 2 CPUs,
        else 1.
    engine
        ``"numba"``, ``"scipy"`` or ``"torch"`` (see module docstring). Default: ``$PBI_
        REDUCTION_ENGINE``, else ``"numba"`` when numba is importable, else ``"scipy"``.
    cache
        Folder of the operator cache, ``False`` to build without it, or ``None`` for the
        default (``$PBI_OPERATOR_CACHE``, else the user cache dir; see :mod:`.opcache`).
    device
        torch engine only: ``"cuda"``, ``"cpu"``... (default: CUDA when available).

    Attributes
    ----------
    setup_info
        How the operator was obtained: ``{"cache": "hit" | "miss" | "off" | "rebuilt",
        "seconds": ..., "path": ...}``.

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
        cache: str | Path | bool | None = None,
        device: str | None = None,
    ) -> None:
        settle_numexpr()
        t0 = time.perf_counter()
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
        if split not in ("bbox", "no"):
            raise ReductionError(f"split must be 'bbox' or 'no', got {split!r}")
        self.dtype = np.dtype(accumulate)
        engine = _default_engine() if engine is None else engine
        if engine not in ENGINES:
            raise ReductionError(f"engine must be one of {ENGINES}, got {engine!r}")
        if engine == "numba" and not numba_available():
            raise ReductionError("engine='numba' needs the numba package")
        self.engine = engine
        if not self.q_range[0] < self.q_range[1]:
            raise ReductionError(f"q range must be increasing, got {self.q_range}")
        size = self.shape[0] * self.shape[1]
        mask_arr = self._static_mask(ai, mask, dark, flat)
        self._dark = None if dark is None else np.asarray(dark, dtype=np.float32).ravel()
        flat_arr = None if flat is None else np.asarray(flat, dtype=np.float32).ravel()
        settings = {
            "geometry": ai.get_config(), "detector": ai.detector.name, "shape": self.shape,
            "npt": self.npt, "q_range": self.q_range, "unit": UNIT, "split": split,
            "polarization_factor": polarization_factor,
            "solid_angle": bool(correct_solid_angle), "pyfai": pyFAI.version,
            "dummy": [ai.detector.dummy, ai.detector.delta_dummy],
        }
        key, text = cache_key(settings, {"mask": mask_arr, "dark": self._dark,
                                         "flat": flat_arr})
        self.cache_key = key
        folder = default_cache_dir() if cache is None or cache is True else (
            None if cache is False else Path(cache))
        store = OperatorCache(folder) if folder is not None else None
        state = store.load(key, text) if store is not None else None
        status = "off" if store is None else "miss"
        if state is not None:
            try:
                self._adopt(state, size)
                status = "hit"
            except ReductionError as exc:
                logger.warning("folded-operator cache %s failed validation (%s); rebuilding",
                               store.path(key), exc)
                state, status = None, "rebuilt"
        elif store is not None and store.path(key).is_file():
            status = "rebuilt"  # the file existed but could not be read (warned)
        if state is None:
            state = self._build(ai, mask_arr, flat_arr, polarization_factor,
                                correct_solid_angle, split)
            self._adopt(state, size)
            if store is not None:
                store.store(key, text, state)
        self._masked = np.flatnonzero(mask_arr.ravel())
        dummy, delta = ai.detector.dummy, ai.detector.delta_dummy
        self._dummy = None if dummy is None else (float(dummy), delta)
        self.mask = mask_arr
        self._engine = self._make_engine(device)
        self.setup_info: dict[str, Any] = {
            "cache": status, "seconds": round(time.perf_counter() - t0, 4),
            "path": None if store is None else str(store.path(key)),
        }
        logger.info("FoldedIntegrator: %d bins, %d exception pixels, %d masked pixels, %s "
                    "engine, %d thread(s), operator cache %s (%.2f s)", self.npt,
                    self.op.ex_pixel.size, int(mask_arr.sum()), self.engine, self.threads,
                    status, self.setup_info["seconds"])

    # -- construction -------------------------------------------------------------------
    def _build(self, ai, mask_arr, flat, polarization_factor, correct_solid_angle,
               split) -> dict[str, NDArray]:
        """Run the pyFAI sparse build (slow, cached) and every static sum, as plain arrays."""
        size = self.shape[0] * self.shape[1]
        engine = ai.setup_sparse_integrator(
            self.shape, self.npt, mask=mask_arr.astype(np.int8), pos0_range=self.q_range,
            unit=UNIT, split=split, algo="CSR", empty=np.nan, scale=True,
        )
        data, indices, indptr = engine.lut
        exact = sp.csr_matrix((np.asarray(data, dtype=np.float64), indices, indptr),
                              shape=(self.npt, size))
        op = compact_from_csr(exact)
        weight = np.ones(size, dtype=np.float32)
        if flat is not None:
            weight *= flat
        if polarization_factor is not None:
            weight *= ai.polarization(self.shape, polarization_factor).astype(np.float32).ravel()
        if correct_solid_angle:
            weight *= ai.solidAngleArray(self.shape).astype(np.float32).ravel()
        return {
            **op.to_arrays(),
            "q": np.asarray(engine.bin_centers, dtype=np.float64) * 0.1,  # nm^-1 -> A^-1
            "weight": weight,
            "norm": op.dot(weight),
            "count": op.dot(np.ones(size)),
            "cdark": np.zeros(self.npt) if self._dark is None else op.dot(self._dark),
        }

    def _adopt(self, state: dict[str, NDArray], size: int) -> None:
        """Take the arrays of a build or a cache file, checking every one of them."""
        op = CompactOperator.from_arrays(state)
        if op.npt != self.npt or op.size != size:
            raise ReductionError(f"operator is {op.npt} bins x {op.size} pixels, expected "
                                 f"{self.npt} x {size}")
        for name, dtype, length in (("q", np.float64, self.npt), ("norm", np.float64, self.npt),
                                    ("count", np.float64, self.npt),
                                    ("cdark", np.float64, self.npt),
                                    ("weight", np.float32, size)):
            arr = state.get(name)
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != (length,):
                raise ReductionError(f"operator array {name!r} is missing or malformed")
            if not np.all(np.isfinite(arr)):
                raise ReductionError(f"operator array {name!r} is not finite")
        if np.any(np.diff(state["q"]) <= 0):
            raise ReductionError("operator q grid is not increasing")
        self.op = op
        self.q = state["q"]
        self._weight = state["weight"]
        self._norm = state["norm"]
        self.count = state["count"]
        self._cdark = state["cdark"]
        self._empty = self._norm <= 0

    def _make_engine(self, device: str | None):
        if self.engine == "numba":
            engine = kernels.NumbaEngine(self.op, self._weight, self._dark,
                                         round32=self.dtype == np.float32,
                                         threads=self.threads)
            engine.warm_up(dummy=self.dummy_for)
            return engine
        if self.engine == "scipy":
            return ScipyEngine(self.op.to_csr(), self._weight, self._dark, self._masked,
                               self.dtype, self.threads)
        from .torch_engine import TorchEngine

        return TorchEngine(self, device=device)

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

    # -- per frame ----------------------------------------------------------------------
    def dummy_for(self, dtype: np.dtype) -> Dummy | None:
        """Return the dummy value as pyFAI computes it for a frame of this dtype."""
        if self._dummy is None:
            return None
        value = np.float32(np.dtype(dtype).type(np.int64(self._dummy[0])))
        delta = np.finfo(np.float32).eps if self._dummy[1] is None else self._dummy[1]
        return Dummy(float(value), float(np.float32(delta)))

    def finish(self, sums: NDArray, monitor: NDArray | float) -> tuple[NDArray, NDArray]:
        """I and sigma from ``(..., 4, npt)`` sums (signal, variance, dropped weight, dark)."""
        mon = np.asarray(monitor, dtype=np.float64)[..., None]
        norm = (self._norm - sums[..., 2, :]) * mon
        signal = sums[..., 0, :] - (self._cdark - sums[..., 3, :])
        with np.errstate(divide="ignore", invalid="ignore"):
            intensity = signal / norm
            sigma = np.sqrt(sums[..., 1, :]) / norm
        bad = ~(norm > 0)
        intensity[bad] = np.nan
        sigma[bad] = np.nan
        return intensity, sigma

    def _check(self, frame: ArrayLike) -> NDArray:
        frame = np.asarray(frame)
        if frame.shape != self.shape:
            raise ReductionError(f"frame shape {frame.shape} does not match integrator shape "
                                 f"{self.shape}")
        self._check_dtype(frame.dtype)
        return frame

    @staticmethod
    def _check_dtype(dtype: np.dtype) -> None:
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
                or dtype == np.bool_):
            raise ReductionError(f"frame dtype {dtype} is not numeric")

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
        sums = self._engine.sums(frame.reshape(-1), self.dummy_for(frame.dtype))
        return self.finish(sums, float(monitor))

    def integrate_many(
        self, frames: ArrayLike, monitors: ArrayLike | float = 1.0
    ) -> tuple[NDArray, NDArray]:
        """Integrate a stack of frames (faster per frame than :meth:`integrate`).

        The numba engine reads the operator once per chunk of frames (``kernels.
        BATCH_CHUNK``), the torch engine does one sparse mat-mat per chunk; results equal
        :meth:`integrate` frame by frame (numba: bit for bit).

        Parameters
        ----------
        frames
            Array ``(n, ny, nx)`` (best: C-contiguous, as read from an HDF5 dataset).
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
        self._check_dtype(frames.dtype)
        n = frames.shape[0]
        mon = np.broadcast_to(np.asarray(monitors, dtype=np.float64), (n,))
        if n == 0:
            return np.empty((0, self.npt)), np.empty((0, self.npt))
        sums = self._engine.sums_many(frames.reshape(n, -1), self.dummy_for(frames.dtype))
        return self.finish(sums, mon)

    def integrate_tensor(self, frames: Any, monitors: Any = 1.0):
        """Integrate a batch to I and sigma ``(n, npt)`` as float64 *device* tensors.

        Torch engine only. ``frames`` is numpy ``(n, ny, nx)``, uploaded once, or a tensor
        already on the device; the result is for a model that runs on the same device (see
        ``models.torch_head``).
        """
        if self.engine != "torch":
            raise ReductionError(f"integrate_tensor needs engine='torch' (this integrator "
                                 f"uses {self.engine!r})")
        return self._engine.integrate_tensor(frames, monitors)

    @property
    def device(self) -> str:
        """Where the per-frame sums run: ``"cpu"`` or the torch engine's device."""
        return str(self._engine.device) if self.engine == "torch" else "cpu"
