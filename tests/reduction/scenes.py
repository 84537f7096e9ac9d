"""The reduction tests' shared scene: a simulated Pilatus 1M frame with its corrections, and
pyFAI's reference integration of it (the ``scene`` fixture is in ``conftest.py``)."""

from __future__ import annotations

import numpy as np

from pbi_bluesky.reduction import Reducer, expected_frame, make_geometry

NPT = 300
POL = 0.99
RTOL = 1e-4


def iq(q):
    return 1e3 / (1.0 + (q * 100.0) ** 2) + 3.0


def make_scene():
    """Pilatus 1M at 3 m, 1 A: Poisson int32 frame, dark, flat, gaps + beamstop mask."""
    ai = make_geometry("Pilatus1M", distance_m=3.0, wavelength_angstrom=1.0)
    shape = ai.detector.shape
    rng = np.random.default_rng(42)
    dark = rng.uniform(0.0, 3.0, shape).astype(np.float32)
    flat = rng.uniform(0.9, 1.1, shape).astype(np.float32)
    rows, cols = np.indices(shape)
    cy, cx = 521, 486
    beamstop = (rows - cy) ** 2 + (cols - cx) ** 2 < 30**2
    mask = beamstop | ai.detector.mask.astype(bool)
    expected = expected_frame(ai, iq, flux=20.0, polarization_factor=POL, dark=dark) * flat
    frame = rng.poisson(expected).astype(np.int32)
    reducer = Reducer(ai, npt=NPT, mask=beamstop, dark=dark, flat=flat,
                      polarization_factor=POL)
    return {"ai": ai, "frame": frame, "dark": dark, "flat": flat, "mask": mask,
            "beamstop": beamstop, "reducer": reducer, "expected": expected, "rng": rng}


def pyfai_reference(scene, frame, monitor, method=("bbox", "csr", "cython")):
    red = scene["reducer"]
    return scene["ai"].integrate1d(
        frame, NPT, unit="q_A^-1", method=method, mask=scene["mask"], dark=scene["dark"],
        flat=scene["flat"], polarization_factor=POL, correctSolidAngle=True,
        normalization_factor=monitor, radial_range=red.q_range, error_model="poisson",
    )
