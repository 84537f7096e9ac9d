"""Physical descriptors of a SAXS curve, fitted (not read off an argmax).

A least-squares fit of ``I(q) = TS(q; K, d, xi) + P / q^4 + B`` (Teubner-Strey peak,
Porod term, flat background) gives the domain spacing ``d``, the correlation length
``xi``, the Porod constant ``P`` (proportional to interfacial area per volume) and the
background ``B``. Model-free descriptors complete the set: the invariant
``Q* = integral q^2 I dq`` over the grid, the mean absolute intensity level, and the
low-q log-log slope (contamination and aggregates steepen it).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import least_squares

__all__ = ["DESCRIPTORS", "fit_descriptors"]

DESCRIPTORS: tuple[str, ...] = (
    "domain_spacing_A",
    "correlation_length_A",
    "porod_constant",
    "invariant",
    "intensity_level",
    "background",
    "low_q_slope",
)


def _teubner_strey(q: NDArray, amplitude: float, d: float, xi: float) -> NDArray:
    k = 2 * np.pi * xi / d
    a2 = (1 + k**2) ** 2
    c1 = 2 * xi**2 * (1 - k**2)
    c2 = xi**4
    return amplitude * a2 / (a2 + c1 * q**2 + c2 * q**4)


def _model(params: NDArray, q: NDArray) -> NDArray:
    log_amp, log_d, log_xi, log_p, bkg = params
    ts = _teubner_strey(q, np.exp(log_amp), np.exp(log_d), np.exp(log_xi))
    return ts + np.exp(log_p) * q**-4 + bkg


def fit_descriptors(q: NDArray, intensity: NDArray, sigma: NDArray) -> NDArray[np.float64]:
    """Descriptor vector (order of :data:`DESCRIPTORS`) of one curve on a log q grid."""
    q = np.asarray(q, dtype=np.float64)
    i = np.asarray(intensity, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64)
    weight = 1.0 / np.sqrt(s**2 + (0.01 * np.abs(i)) ** 2 + 1e-30)
    level = float(np.mean(np.abs(i))) + 1e-12
    bkg0 = float(np.median(i[-len(i) // 10 :]))
    amp0 = max(float(np.max(i)) - bkg0, 1e-6 * level)
    best = None
    for d0 in (200.0, 320.0, 500.0):
        x0 = np.array([np.log(amp0), np.log(d0), np.log(0.4 * d0),
                       np.log(1e-3 * level * q[0] ** 4 + 1e-30), bkg0])
        lower = [np.log(1e-8 * level), np.log(60.0), np.log(10.0), np.log(1e-40), -10 * level]
        upper = [np.log(1e3 * level), np.log(3000.0), np.log(3000.0),
                 np.log(1e6 * level * q[0] ** 4), 10 * level]
        x0 = np.clip(x0, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
        # each start is capped at 40 evaluations (a typical fit converges in ~17); curves
        # that do not settle by then are badly described by this model anyway
        fit = least_squares(lambda p: (_model(p, q) - i) * weight, x0, bounds=(lower, upper),
                            method="trf", max_nfev=40, x_scale="jac")
        if best is None or fit.cost < best.cost:
            best = fit
    assert best is not None
    log_amp, log_d, log_xi, log_p, bkg = best.x
    invariant = float(np.trapezoid(q**2 * i, q))
    n_low = max(len(q) // 12, 4)
    pos = i[:n_low] > 0
    if pos.sum() >= 3:
        slope = float(np.polyfit(np.log(q[:n_low][pos]), np.log(i[:n_low][pos]), 1)[0])
    else:
        slope = 0.0
    intensity_level = float(np.trapezoid(i, np.log(q)) / (np.log(q[-1]) - np.log(q[0])))
    return np.array([np.exp(log_d), np.exp(log_xi), np.exp(log_p), invariant,
                     intensity_level, bkg, slope])
