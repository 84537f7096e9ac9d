"""The device-side model head: resampling matrix and embeddings against the host path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pbi_bluesky.models.representation import CoverageError, QGrid
from pbi_bluesky.models.torch_head import DeviceEmbedder, resample_matrix


def test_resample_matrix_is_np_interp_in_log_q():
    rng = np.random.default_rng(0)
    q = np.geomspace(0.005, 0.25, 300)
    valid = rng.random(300) > 0.1
    valid[[0, -1]] = True
    grid = QGrid(q_min=0.008, q_max=0.19, npt=64)
    r = resample_matrix(q, valid, grid)
    y = rng.normal(size=300)
    np.testing.assert_allclose(r @ y, np.interp(np.log(grid.q), np.log(q[valid]), y[valid]),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(CoverageError):
        resample_matrix(q[100:], valid[100:], grid)


def test_device_embeddings_match_the_host_path(tiny_model, training_set):
    profiles, recipes = training_set
    det = tiny_model
    core = det.members[0] if getattr(det, "members", None) else det
    batch = profiles[:24]
    valid = batch[0].valid
    assert all(np.array_equal(p.valid, valid) for p in batch)
    intensity = torch.from_numpy(np.stack([p.intensity for p in batch]))
    sigma = torch.from_numpy(np.stack([p.sigma for p in batch]))
    idx = np.array([det.recipes.index(r) for r in recipes[:24]])
    head = DeviceEmbedder(core, det.grid, batch[0].q_inv_angstrom, valid, device="cpu")
    emb, i_grid, s_grid, needs_host = head(intensity, sigma, idx)
    assert emb.device.type == "cpu" and not bool(needs_host.any())
    i_host, s_host = det.resample(batch)
    np.testing.assert_allclose(i_grid.numpy(), i_host, rtol=1e-9)
    np.testing.assert_allclose(s_grid.numpy(), s_host, rtol=1e-9)
    expected = core._embed(i_host, s_host, idx)
    np.testing.assert_allclose(emb.double().numpy(), expected, rtol=1e-4, atol=1e-5)
    # a curve with a bin emptied (NaN) goes back to the host path
    bad = intensity.clone()
    bad[3, int(np.flatnonzero(valid)[10])] = float("nan")
    assert head(bad, sigma, idx)[3].tolist() == [k == 3 for k in range(24)]
