"""The torch engine of :class:`~.integrator.FoldedIntegrator`: batched sparse mat-mat.

The folded operator (the same quantised coefficients as the numba engine, see
:mod:`.operator`) becomes two torch CSR matrices, ``C`` and ``C^2``, on the chosen device
(CUDA when present, else the CPU). A batch of frames is uploaded once as its raw integer
(or float) array, converted on the device, and reduced with one ``C @ X`` and one
``C^2 @ max(X, 1)`` over all its frames; frames holding the detector's dummy value get the
dynamic-mask corrections from one more product. :meth:`TorchEngine.integrate_tensor`
returns I and sigma as device tensors, so a model can take them in the same CUDA stream
without a round trip through the host; :meth:`sums` / :meth:`sums_many` give the engine
interface the integrator uses (numpy in, numpy out).

The CPU path runs exactly this code; the tests run it against the numba and scipy engines.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import NDArray

from .kernels import dummy_bounds

if TYPE_CHECKING:  # pragma: no cover
    from .integrator import FoldedIntegrator

__all__ = ["TorchEngine", "default_device"]

logger = logging.getLogger(__name__)

_TORCH_DTYPES = {np.dtype(np.int8): torch.int8, np.dtype(np.uint8): torch.uint8,
                 np.dtype(np.int16): torch.int16, np.dtype(np.int32): torch.int32,
                 np.dtype(np.int64): torch.int64, np.dtype(np.float32): torch.float32,
                 np.dtype(np.float64): torch.float64, np.dtype(np.bool_): torch.bool}


def default_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _csr(matrix, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(np.ascontiguousarray(matrix.data)).to(dtype),
            size=matrix.shape, device=device, check_invariants=False)


class TorchEngine:
    """Per-frame sums of a :class:`FoldedIntegrator` with torch sparse products.

    Parameters
    ----------
    integrator
        The integrator whose operator, weights and dark it uses.
    device
        torch device (default :func:`default_device`).
    """

    name = "torch"

    def __init__(self, integrator: FoldedIntegrator, device: str | None = None) -> None:
        self.device = torch.device(device or default_device())
        self.dtype = torch.float64 if integrator.dtype == np.float64 else torch.float32
        csr = integrator.op.to_csr(np.float64)
        self.npt = integrator.npt
        self._c = _csr(csr, self.device, self.dtype)
        sq = csr.copy()
        sq.data = sq.data * sq.data
        self._c2 = _csr(sq, self.device, self.dtype)
        self._weight = torch.from_numpy(integrator._weight).to(self.device, self.dtype)
        self._dark = (None if integrator._dark is None
                      else torch.from_numpy(integrator._dark).to(self.device, self.dtype))
        self._norm = torch.from_numpy(integrator._norm).to(self.device, torch.float64)
        self._cdark = torch.from_numpy(integrator._cdark).to(self.device, torch.float64)
        self._dummy_for = integrator.dummy_for
        logger.info("torch engine on %s (%s), %d x %d operator", self.device, self.dtype,
                    *csr.shape)

    # -- device-side API --------------------------------------------------------------
    def upload(self, frames: NDArray | torch.Tensor) -> torch.Tensor:
        """Put frames ``(n, ny, nx)`` or ``(n, pixels)`` on the device, in their own dtype.

        An int32 frame travels as 4 bytes per pixel.
        """
        if isinstance(frames, torch.Tensor):
            return frames.to(self.device, non_blocking=True)
        arr = np.asarray(frames)
        if arr.dtype not in _TORCH_DTYPES:  # e.g. uint16/uint32: widen losslessly
            arr = arr.astype(np.int64 if arr.dtype.kind in "ui" else np.float64)
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        tensor = torch.from_numpy(np.ascontiguousarray(arr))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def sums_tensor(self, frames: torch.Tensor, dummy) -> torch.Tensor:
        """Return the ``(n, 4, npt)`` sums of device frames ``(n, pixels)``.

        Signal, variance, dropped weight and dropped dark, in the engine's dtype.
        """
        n = frames.shape[0]
        x32 = frames.reshape(n, -1).to(torch.float32)
        x = x32 if self.dtype == torch.float32 else frames.reshape(n, -1).to(self.dtype)
        flagged = None
        if dummy is not None:
            lo, hi = dummy_bounds(dummy.value, dummy.delta)
            flagged = (x32 >= float(lo)) & (x32 <= float(hi))
            if not bool(flagged.any()):
                flagged = None
        if flagged is not None:
            x = torch.where(flagged, torch.zeros((), dtype=x.dtype, device=x.device), x)
        m = torch.clamp(x, min=1.0)  # max(x, 1), NaN stays NaN
        if flagged is not None:
            m = torch.where(flagged, torch.zeros((), dtype=m.dtype, device=m.device), m)
        out = torch.zeros((4, self.npt, n), dtype=self.dtype, device=self.device)
        out[0] = self._c @ x.T.contiguous()
        out[1] = self._c2 @ m.T.contiguous()
        if flagged is not None:
            fl = flagged.to(self.dtype)
            out[2] = self._c @ (fl * self._weight).T.contiguous()
            if self._dark is not None:
                out[3] = self._c @ (fl * self._dark).T.contiguous()
        return out.permute(2, 0, 1)

    def integrate_tensor(self, frames: NDArray | torch.Tensor,
                         monitors: NDArray | torch.Tensor | float = 1.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """I and sigma ``(n, npt)`` (float64 device tensors) of a batch of frames.

        ``frames`` is ``(n, ny, nx)`` (numpy or a tensor); it is uploaded once. NaN in bins
        without pixels, as :meth:`FoldedIntegrator.integrate`.
        """
        if isinstance(frames, torch.Tensor):
            dtype = np.dtype(str(frames.dtype).replace("torch.", ""))
        else:
            frames = np.asarray(frames)
            dtype = frames.dtype
        tensor = self.upload(frames)
        sums = self.sums_tensor(tensor.reshape(tensor.shape[0], -1), self._dummy_for(dtype))
        mon = torch.as_tensor(monitors, dtype=torch.float64, device=self.device)
        mon = torch.broadcast_to(mon, (tensor.shape[0],))[:, None]
        sums = sums.to(torch.float64)
        norm = (self._norm - sums[:, 2]) * mon
        signal = sums[:, 0] - (self._cdark - sums[:, 3])
        intensity = signal / norm
        sigma = torch.sqrt(sums[:, 1]) / norm
        bad = ~(norm > 0)
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.device)
        return torch.where(bad, nan, intensity), torch.where(bad, nan, sigma)

    # -- engine interface (numpy in and out) ------------------------------------------
    def sums(self, flat: NDArray, dummy) -> NDArray[np.float64]:
        """``(4, npt)`` sums of one flat frame."""
        return self.sums_many(np.asarray(flat)[None], dummy)[0]

    @torch.no_grad()
    def sums_many(self, stack: NDArray, dummy) -> NDArray[np.float64]:
        """``(n, 4, npt)`` sums of a ``(n, pixels)`` stack."""
        out = self.sums_tensor(self.upload(stack), dummy)
        return out.to(torch.float64).cpu().numpy()
