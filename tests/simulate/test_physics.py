"""The simulator's physics: recipes, anomaly catalogue, reproducibility."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pbi_bluesky.simulate import (
    PS_PMMA,
    SAMPLE_ANOMALIES,
    applicable_anomalies,
    apply_anomaly,
    intensity_inv_cm,
    load_blend_system,
    nominal_state,
    parse_recipe,
    simulate_profile,
)

Q = np.linspace(0.007, 0.2, 400)


def _peak_q(intensity: np.ndarray) -> float:
    """q of the correlation peak of a curve (away from the low-q Porod edge)."""
    window = Q > 0.011
    return float(Q[window][np.argmax(intensity[window])])


def test_recipes_parse_and_blend_contrast():
    assert parse_recipe("25:75") == pytest.approx(0.25)
    assert parse_recipe("100:0") == 1.0
    with pytest.raises(ValueError, match="A:B"):
        parse_recipe("fifty-fifty")
    assert PS_PMMA.contrast_1e6_inv_A2() == pytest.approx(-1.3)


def test_absolute_scale_of_pure_polymer_is_density_fluctuation_background():
    pure_ps = intensity_inv_cm(nominal_state(PS_PMMA, "100:0"), Q)
    np.testing.assert_allclose(pure_ps, PS_PMMA.component_a.fluctuation_background_inv_cm)


def test_blend_shows_correlation_peak_near_two_pi_over_d():
    state = nominal_state(PS_PMMA, "50:50")
    curve = intensity_inv_cm(state, Q)
    q_peak = _peak_q(curve)
    # Teubner-Strey maximum lies somewhat below 2*pi/d for finite xi
    assert 0.6 * 2 * np.pi / state.domain_spacing_A < q_peak < 2 * np.pi / state.domain_spacing_A
    assert curve.max() > 10.0  # 1/cm: a real blend scatters strongly


def test_intensity_scales_with_phi_one_minus_phi():
    """Blend term ~ phi(1-phi) drho^2: 25:75 weaker than 50:50 at the peak."""
    i25 = intensity_inv_cm(nominal_state(PS_PMMA, "25:75"), Q).max()
    i50 = intensity_inv_cm(nominal_state(PS_PMMA, "50:50"), Q).max()
    assert i25 < i50


@pytest.mark.parametrize("recipe", PS_PMMA.recipes)
@pytest.mark.parametrize("kind", SAMPLE_ANOMALIES)
def test_every_anomaly_changes_the_curve(recipe, kind, rng):
    if kind not in applicable_anomalies(recipe):
        with pytest.raises(ValueError, match="does not apply"):
            apply_anomaly(nominal_state(PS_PMMA, recipe), kind, 0.5, rng)
        return
    base = nominal_state(PS_PMMA, recipe)
    for severity in (0.0, 1.0):
        changed = apply_anomaly(base, kind, severity, rng)
        assert changed.is_anomaly and changed.kind == kind
        diff = np.abs(intensity_inv_cm(changed, Q) / intensity_inv_cm(base, Q) - 1)
        assert diff.max() > 0.03, f"{kind} at severity {severity} leaves {recipe} unchanged"


def test_contamination_raises_low_q_only(rng):
    base = nominal_state(PS_PMMA, "25:75")
    dirty = apply_anomaly(base, "contamination", 0.5, rng)
    ratio = intensity_inv_cm(dirty, Q) / intensity_inv_cm(base, Q)
    assert ratio[0] > 1.3
    assert ratio[-1] < 1.01
    assert np.argmax(ratio) == 0  # strongest at the lowest q


def test_coarsening_moves_peak_to_lower_q_and_adds_interface(rng):
    base = nominal_state(PS_PMMA, "50:50")
    coarse = apply_anomaly(base, "coarsening", 0.5, rng)
    assert _peak_q(intensity_inv_cm(coarse, Q)) < _peak_q(intensity_inv_cm(base, Q))
    assert coarse.interface_factor > base.interface_factor


def test_degradation_broadens_peak(rng):
    base = nominal_state(PS_PMMA, "50:50")
    worn = apply_anomaly(base, "degradation", 1.0, rng)
    i_base, i_worn = intensity_inv_cm(base, Q), intensity_inv_cm(worn, Q)
    # a broader, lower peak: less contrast between peak and the high-q side
    assert i_worn.max() < i_base.max()
    assert i_worn.max() / i_worn[Q > 0.06][0] < i_base.max() / i_base[Q > 0.06][0]


@pytest.mark.parametrize("severity, low, high", [(0.0, 0.15, 0.15), (1.0, 0.5, 0.5)])
def test_thickness_error_scales_curve(severity, low, high, rng):
    base = nominal_state(PS_PMMA, "75:25")
    off = apply_anomaly(base, "thickness_error", severity, rng)
    ratio = intensity_inv_cm(off, Q) / intensity_inv_cm(base, Q)
    np.testing.assert_allclose(np.abs(ratio - 1), low, rtol=1e-9)


def test_composition_drift_of_pure_polymer_adds_the_other_component(rng):
    drifted = apply_anomaly(nominal_state(PS_PMMA, "0:100"), "composition_drift", 0.0, rng)
    assert drifted.weight_fraction_a == pytest.approx(0.04)
    assert intensity_inv_cm(drifted, Q).max() > 1.0  # a blend peak appears


def test_mislabelled_sample_is_another_recipe(rng):
    wrong = apply_anomaly(nominal_state(PS_PMMA, "25:75"), "mislabelled", 1.0, rng)
    assert wrong.label == "25:75"
    assert wrong.anomaly_params["actual_recipe"] != "25:75"
    assert abs(wrong.weight_fraction_a - 0.25) > 0.1


def test_severity_out_of_range_and_unknown_kind_are_refused(rng):
    base = nominal_state(PS_PMMA, "50:50")
    with pytest.raises(ValueError, match="severity"):
        apply_anomaly(base, "coarsening", 1.5, rng)
    with pytest.raises(ValueError, match="unknown anomaly"):
        apply_anomaly(base, "gremlins", 0.5, rng)


def test_simulated_profile_is_reproducible_by_seed(instrument):
    def draw(seed):
        r = np.random.default_rng(seed)
        return simulate_profile(nominal_state(PS_PMMA, "50:50", r), instrument, r)

    a, b, c = draw(1), draw(1), draw(2)
    np.testing.assert_array_equal(a.intensity, b.intensity)
    assert not np.array_equal(a.intensity, c.intensity)


def test_simulated_noise_matches_its_sigma(instrument):
    """Residuals to the exact model, divided by sigma, have unit variance."""
    r = np.random.default_rng(3)
    state = nominal_state(PS_PMMA, "25:75")
    ref = intensity_inv_cm(state, instrument.q_centers_inv_angstrom)
    z = np.concatenate(
        [(p.intensity - ref) / p.sigma for p in (simulate_profile(state, instrument, r)
                                                 for _ in range(20))]
    )
    assert np.mean(z**2) == pytest.approx(1.0, abs=0.05)
    assert abs(np.mean(z)) < 0.05


def test_other_blend_from_yaml(tmp_path):
    spec = tmp_path / "blend.yaml"
    spec.write_text(
        "name: PE/PP\n"
        "component_a: {name: PE, sld_1e6_inv_A2: 8.9, density_g_cm3: 0.95,"
        " fluctuation_background_inv_cm: 0.04, attenuation_inv_cm: 1.9}\n"
        "component_b: {name: PP, sld_1e6_inv_A2: 8.2, density_g_cm3: 0.90,"
        " fluctuation_background_inv_cm: 0.05, attenuation_inv_cm: 1.8}\n"
        "recipes: ['30:70', '70:30']\n"
        "structure: [{weight_fraction_a: 0.3, domain_spacing_A: 400, correlation_length_A: 150},"
        " {weight_fraction_a: 0.7, domain_spacing_A: 450, correlation_length_A: 160}]\n"
    )
    system = load_blend_system(spec)
    assert system.recipes == ("30:70", "70:30")
    state = nominal_state(system, "30:70")
    assert state.domain_spacing_A == 400
    assert _peak_q(intensity_inv_cm(state, Q)) < 2 * np.pi / 400
    with pytest.raises(FileNotFoundError):
        load_blend_system(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    with pytest.raises(ValueError, match="invalid blend-system"):
        load_blend_system(bad)


def test_truth_is_json_ready():
    import json

    truth = nominal_state(PS_PMMA, "50:50").truth()
    assert json.loads(json.dumps(truth))["label"] == "50:50"
    assert dataclasses.is_dataclass(nominal_state(PS_PMMA, "50:50"))
