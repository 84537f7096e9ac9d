"""The second physics family (filled semicrystalline PE): absolute scale, recipes, anomalies."""

from __future__ import annotations

import numpy as np
import pytest

from pbi_bluesky.simulate import Instrument, simulate_profile
from pbi_bluesky.simulate.semicrystalline import (
    FILLED_ANOMALIES,
    FILLED_PE,
    apply_filled_anomaly,
    damage_series,
    nominal_filled_state,
)

Q = np.geomspace(0.008, 0.19, 300)


def test_long_period_peak_and_two_phase_invariant():
    state = nominal_filled_state(FILLED_PE, "PE+0%SiO2")
    curve = state.intensity_inv_cm(Q)
    q_peak = Q[np.argmax(curve)]
    assert 0.85 * 2 * np.pi / 200 < q_peak < 1.1 * 2 * np.pi / 200
    # the lamellar term carries the two-phase invariant 2 pi^2 phi(1-phi) drho^2
    lam = state._lamellae(np.linspace(1e-4, 3.0, 60000), state.long_period_A, 1.0)
    q = np.linspace(1e-4, 3.0, 60000)
    expected = 2 * np.pi**2 * 0.55 * 0.45 * (9.68 - 8.28) ** 2 * 1e-4
    assert np.trapezoid(q**2 * lam, q) == pytest.approx(expected, rel=1e-3)


def test_filler_raises_low_q_with_loading():
    low = [nominal_filled_state(FILLED_PE, r).intensity_inv_cm(np.array([0.01]))[0]
           for r in FILLED_PE.recipes]
    assert low == sorted(low) and low[-1] > 100 * low[0]


@pytest.mark.parametrize("kind", FILLED_ANOMALIES)
@pytest.mark.parametrize("recipe", list(FILLED_PE.recipes))
def test_every_anomaly_changes_the_curve(kind, recipe):
    rng = np.random.default_rng(4)
    base = nominal_filled_state(FILLED_PE, recipe)
    for severity in (0.0, 1.0):
        changed = apply_filled_anomaly(base, kind, severity, rng)
        assert changed.is_anomaly and changed.kind == kind
        diff = np.abs(changed.intensity_inv_cm(Q) / base.intensity_inv_cm(Q) - 1)
        # severity 0 is barely visible: a few % somewhere on the curve
        assert diff.max() > 0.02, f"{kind} at severity {severity} leaves {recipe} unchanged"


def test_damage_grows_with_dose():
    base = nominal_filled_state(FILLED_PE, "PE+1%SiO2")
    series = damage_series(base, 0.5, 6)
    assert series[0] is base and len(series) == 6
    low = [s.intensity_inv_cm(np.array([0.01]))[0] for s in series]
    assert all(b > a for a, b in zip(low, low[1:], strict=False))
    assert low[-1] / low[0] == pytest.approx(1 + 0.1 + 1.9 * 0.5, rel=0.02)


def test_unknown_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown recipe"):
        nominal_filled_state(FILLED_PE, "PE+3%SiO2")
    base = nominal_filled_state(FILLED_PE, "PE+1%SiO2")
    with pytest.raises(ValueError, match="unknown anomaly"):
        apply_filled_anomaly(base, "gremlin", 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="severity"):
        apply_filled_anomaly(base, "smearing", 1.5, np.random.default_rng(0))


def test_renders_through_the_same_instrument(instrument):
    rng = np.random.default_rng(1)
    prof = simulate_profile(nominal_filled_state(FILLED_PE, "PE+2%SiO2", rng), instrument, rng)
    assert prof.metadata["composition"] == "PE+2%SiO2" and np.isfinite(prof.intensity).all()
    assert isinstance(instrument, Instrument)
