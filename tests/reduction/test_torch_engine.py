"""The torch engine (CPU here: the same code runs on CUDA) against the numba and scipy
engines and against pyFAI."""

from __future__ import annotations

import numpy as np
import pytest

from pbi_bluesky.reduction import FoldedIntegrator, ReductionError

from .scenes import NPT, POL, RTOL, pyfai_reference

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def pair(scene):
    red = scene["reducer"]
    kwargs = {"mask": red.mask, "dark": scene["dark"], "flat": scene["flat"],
              "polarization_factor": POL}
    cpu = FoldedIntegrator(scene["ai"], red.shape, NPT, red.q_range, **kwargs)
    tor = FoldedIntegrator(scene["ai"], red.shape, NPT, red.q_range, engine="torch",
                           device="cpu", **kwargs)
    return cpu, tor


def test_torch_engine_reports_its_device(pair):
    cpu, tor = pair
    assert tor.engine == "torch"
    assert tor.device == "cpu" and cpu.device == "cpu"
    with pytest.raises(ReductionError, match="engine='torch'"):
        cpu.integrate_tensor(np.zeros((1, *cpu.shape), np.int32))


def test_torch_cpu_matches_cpu_reducer_and_pyfai(scene, pair):
    cpu, tor = pair
    got = tor.integrate(scene["frame"], 3.0)
    ref_cpu = cpu.integrate(scene["frame"], 3.0)
    ok = np.isfinite(ref_cpu[0])
    np.testing.assert_array_equal(np.isfinite(got[0]), ok)
    np.testing.assert_allclose(got[0][ok], ref_cpu[0][ok], rtol=RTOL)
    np.testing.assert_allclose(got[1][ok], ref_cpu[1][ok], rtol=RTOL)
    ref = pyfai_reference(scene, scene["frame"], 3.0)
    filled = np.asarray(ref.count) > 0
    np.testing.assert_allclose(got[0][filled], ref.intensity[filled], rtol=RTOL)
    np.testing.assert_allclose(got[1][filled], ref.sigma[filled], rtol=RTOL)


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.uint16, np.float32])
def test_torch_batch_with_dummy_pixels_matches_numba(scene, pair, dtype):
    cpu, tor = pair
    rng = np.random.default_rng(23)
    frames = rng.poisson(scene["expected"], size=(3, *scene["frame"].shape))
    frames = np.clip(frames, 0, 60000).astype(dtype)
    valid = np.flatnonzero(~scene["mask"].ravel())
    frames[1].ravel()[rng.choice(valid, 300, replace=False)] = np.array(-2).astype(dtype)
    frames[2][scene["mask"]] = np.array(-1).astype(dtype)
    monitors = np.array([1.0, 2.0, 5.0])
    a = cpu.integrate_many(frames, monitors)
    b = tor.integrate_many(frames, monitors)
    ok = np.isfinite(a[0])
    np.testing.assert_array_equal(np.isfinite(b[0]), ok)
    np.testing.assert_allclose(b[0][ok], a[0][ok], rtol=RTOL)
    np.testing.assert_allclose(b[1][ok], a[1][ok], rtol=RTOL)


def test_integrate_tensor_stays_on_the_device(scene, pair):
    cpu, tor = pair
    frames = np.stack([scene["frame"], scene["frame"]])
    intensity, sigma = tor.integrate_tensor(frames, torch.tensor([1.0, 2.0]))
    assert isinstance(intensity, torch.Tensor) and intensity.device.type == "cpu"
    assert intensity.shape == (2, NPT) and sigma.dtype == torch.float64
    ref = cpu.integrate(scene["frame"], 2.0)
    ok = np.isfinite(ref[0])
    np.testing.assert_allclose(intensity[1].numpy()[ok], ref[0][ok], rtol=RTOL)


def test_unknown_engine_names_the_choices(scene):
    red = scene["reducer"]
    with pytest.raises(ReductionError, match="numba.*scipy.*torch"):
        FoldedIntegrator(scene["ai"], red.shape, NPT, red.q_range, engine="opencl")


def test_engine_from_environment(scene, monkeypatch):
    red = scene["reducer"]
    monkeypatch.setenv("PBI_REDUCTION_ENGINE", "scipy")
    assert FoldedIntegrator(scene["ai"], red.shape, NPT, red.q_range).engine == "scipy"
    monkeypatch.setenv("PBI_REDUCTION_ENGINE", "fpga")
    with pytest.raises(ReductionError, match="PBI_REDUCTION_ENGINE"):
        FoldedIntegrator(scene["ai"], red.shape, NPT, red.q_range)
