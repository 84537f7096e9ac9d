"""The embedding network on a torch device, fed by reduced curves that are already there.

:class:`DeviceEmbedder` is the model half of the GPU path: the reduction half
(:class:`pbi_bluesky.reduction.torch_engine.TorchEngine`) leaves I(q) and sigma of a batch
of frames as device tensors; this turns them into the network's input and embeddings on
the same device (same CUDA stream), with no copy through the host:

* resampling onto the model's log-q grid is a fixed matrix (linear interpolation in log q
  over the reducer's filled bins, exactly what :meth:`QGrid.resample` computes with
  ``np.interp`` for that set of bins); a curve whose valid bins differ (a bin emptied by
  dummy pixels) is reported in ``needs_host`` for the ordinary path;
* the two input channels follow :meth:`FittedModel._inputs` (standardised ``asinh(I /
  noise)``, and ``asinh(z / 3)`` of the residual to the expected recipe's reference), in
  float64, cast to float32 for the network, as the host path does.

The CPU runs exactly this code; the tests compare it with the host path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from pbi_bluesky.models.representation import CoverageError, QGrid

__all__ = ["DeviceEmbedder", "resample_matrix"]


def resample_matrix(q_source: NDArray, valid: NDArray, grid: QGrid) -> NDArray[np.float64]:
    """Return the resampling onto ``grid`` as a matrix.

    ``(grid.npt, len(q_source))`` matrix ``R`` with ``R @ y`` equal to
    ``np.interp(log grid, log q[valid], y[valid])`` (raises ``CoverageError`` if the valid
    bins do not cover the grid).
    """
    q_source = np.asarray(q_source, dtype=np.float64)
    ok = np.asarray(valid, dtype=bool)
    if ok.sum() < 2:
        raise CoverageError("fewer than 2 valid bins")
    q_ok = q_source[ok]
    target = grid.q
    if target[0] < q_ok[0] * (1 - 1e-9) or target[-1] > q_ok[-1] * (1 + 1e-9):
        raise CoverageError(f"bins cover q = {q_ok[0]:.4g}..{q_ok[-1]:.4g} 1/A, not the model "
                            f"grid {grid.q_min:.4g}..{grid.q_max:.4g} 1/A")
    log_src, log_grid = np.log(q_ok), np.log(target)
    cols = np.flatnonzero(ok)
    out = np.zeros((target.size, q_source.size))
    for k, col in enumerate(cols):
        unit = np.zeros(cols.size)
        unit[k] = 1.0
        out[:, col] = np.interp(log_grid, log_src, unit)
    return out


class DeviceEmbedder:
    """Embeddings of reduced curves on a torch device.

    Parameters
    ----------
    core
        A fitted scoring model (``network``, ``scaler``, ``references``, ``scatter``): an
        :class:`~pbi_bluesky.models.AnomalyDetector` or one of its members.
    grid
        The model's q grid.
    q_source, valid
        The reducer's bin centres (1/angstrom) and its filled bins (``count > 0``).
    device
        torch device (default: CUDA when present, else CPU).
    network
        The module to run (default ``core.network``; e.g. an int8 copy on the CPU).
    """

    def __init__(self, core: Any, grid: QGrid, q_source: NDArray, valid: NDArray,
                 device: str | torch.device | None = None,
                 network: torch.nn.Module | None = None) -> None:
        if core.scaler is None:
            raise ValueError("the model is not trained")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

        def put(a) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float64), device=self.device)

        self.valid = put(np.asarray(valid, dtype=bool)).bool()
        self._r = put(resample_matrix(q_source, valid, grid)).T.contiguous()  # (npt_src, G)
        self._noise = put(core.scaler.noise_scale)
        self._mean = put(core.scaler.mean)
        self._std = put(core.scaler.std)
        self._ref = put(core.references)
        self._scatter = put(core.scatter)
        net = network if network is not None else core.network
        self.network = net.to(self.device).eval()

    def resample(self, intensity: torch.Tensor, sigma: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Resample curves ``(n, npt_src)`` onto the model grid.

        Also returns ``needs_host`` ``(n,)``: the curves whose valid bins differ from the
        reducer's static ones.
        """
        intensity = intensity.to(self.device, torch.float64)
        sigma = sigma.to(self.device, torch.float64)
        ok = torch.isfinite(intensity) & torch.isfinite(sigma)
        needs_host = (ok != self.valid).any(dim=1)
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        i = torch.where(self.valid, intensity, zero) @ self._r
        s = torch.where(self.valid, sigma, zero) @ self._r
        return i, s, needs_host

    def inputs(self, intensity: torch.Tensor, sigma: torch.Tensor,
               recipe_idx: torch.Tensor) -> torch.Tensor:
        """Network input ``(n, 2, G)`` float32 from curves on the model grid."""
        ch0 = (torch.asinh(intensity / self._noise) - self._mean) / self._std
        ref, sc = self._ref[recipe_idx], self._scatter[recipe_idx]
        z = (intensity - ref) / torch.sqrt(sigma**2 + sc**2)
        ch1 = torch.asinh(z / 3.0)
        return torch.stack([ch0.float(), ch1.float()], dim=1)

    @torch.no_grad()
    def __call__(self, intensity: torch.Tensor, sigma: torch.Tensor,
                 recipe_idx: torch.Tensor | NDArray
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(embeddings, I_grid, sigma_grid, needs_host)`` of reduced curves."""
        i, s, needs_host = self.resample(intensity, sigma)
        idx = torch.as_tensor(np.array(recipe_idx, dtype=np.int64), device=self.device)
        emb = self.network(self.inputs(i, s, idx))
        return emb, i, s, needs_host
