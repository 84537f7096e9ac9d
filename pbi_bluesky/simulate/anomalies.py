"""The anomaly catalogue: what goes wrong with polymer-blend specimens.

Each sample anomaly is a physical change of a :class:`SampleState`, with a severity in
[0, 1] running from barely visible (0) to obvious (1):

=====================  ======================================================================
kind                   physics
=====================  ======================================================================
composition_drift      wrong weigh-in: true wt% of A off by 4-12 wt%; amplitude, background,
                       domain spacing and macrophase interface follow the new composition
coarsening             poor mixing / coarsening: domain spacing up 15-65 %, macrophase
                       interface (Porod) up 1.5-4.5x
contamination          dust, filler aggregates or voids: a low-q power-law upturn, 0.3-3x the
                       clean intensity at q = 0.007 1/A
degradation            loss of order (chain scission, de-compatibilisation): correlation length
                       down 25-70 %, so the peak broadens and drops
thickness_error        wrong thickness/transmission used in normalisation: absolute scale off
                       15-50 %
mislabelled            another recipe than the label says (adjacent recipe at low severity)
=====================  ======================================================================

Instrument faults act on 2D frames, not on the specimen; see
:mod:`pbi_bluesky.simulate.detector` (``INSTRUMENT_FAULTS``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pbi_bluesky.simulate.recipes import parse_recipe
from pbi_bluesky.simulate.scattering import SampleState, nominal_state

__all__ = ["SAMPLE_ANOMALIES", "applicable_anomalies", "apply_anomaly"]

SAMPLE_ANOMALIES: tuple[str, ...] = (
    "composition_drift",
    "coarsening",
    "contamination",
    "degradation",
    "thickness_error",
    "mislabelled",
)

_NEEDS_STRUCTURE = {"coarsening", "degradation"}


def applicable_anomalies(recipe: str) -> tuple[str, ...]:
    """Anomaly kinds that physically change a specimen of ``recipe``.

    A pure polymer has no blend nanostructure, so coarsening and degradation of that
    structure cannot show in its scattering.
    """
    w = parse_recipe(recipe)
    pure = w in (0.0, 1.0)
    return tuple(k for k in SAMPLE_ANOMALIES if not (pure and k in _NEEDS_STRUCTURE))


def _check_severity(severity: float) -> float:
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    return float(severity)


def apply_anomaly(
    state: SampleState, kind: str, severity: float, rng: np.random.Generator
) -> SampleState:
    """Return ``state`` changed by anomaly ``kind`` at ``severity`` (0 subtle, 1 obvious).

    Parameters
    ----------
    state
        A normal specimen (e.g. from :func:`~.scattering.nominal_state`).
    kind
        One of :data:`SAMPLE_ANOMALIES` that applies to the specimen's recipe
        (:func:`applicable_anomalies`).
    severity
        In [0, 1].
    rng
        Draws the random parts of the change (drift direction, contaminant exponent,
        actual recipe...).

    Returns
    -------
    SampleState
        The changed specimen, with ``kind``, ``severity`` and ``anomaly_params`` set.

    Raises
    ------
    ValueError
        For a severity outside [0, 1], an unknown kind, or one that does not apply.
    """
    s = _check_severity(severity)
    system = state.system
    if kind not in SAMPLE_ANOMALIES:
        raise ValueError(f"unknown anomaly kind {kind!r}; known: {', '.join(SAMPLE_ANOMALIES)}")
    if kind not in applicable_anomalies(state.label):
        raise ValueError(f"anomaly {kind!r} does not apply to recipe {state.label!r}")
    params: dict[str, float | str] = {}
    if kind == "composition_drift":
        delta = (4.0 + 8.0 * s) / 100.0
        w0 = state.weight_fraction_a
        sign = 1.0 if w0 <= 0.0 else -1.0 if w0 >= 1.0 else float(rng.choice([-1.0, 1.0]))
        w = float(np.clip(w0 + sign * delta, 0.0, 1.0))
        d, xi = system.structure_at(w)
        d0, xi0 = system.structure_at(w0)
        new = replace(
            state,
            weight_fraction_a=w,
            domain_spacing_A=state.domain_spacing_A * d / d0,
            correlation_length_A=state.correlation_length_A * xi / xi0,
        )
        params = {"delta_weight_fraction_a": w - w0}
    elif kind == "coarsening":
        d_factor = 1.15 + 0.5 * s
        i_factor = 1.5 + 3.0 * s
        new = replace(
            state,
            domain_spacing_A=state.domain_spacing_A * d_factor,
            interface_factor=state.interface_factor * i_factor,
        )
        params = {"domain_spacing_factor": d_factor, "interface_factor": i_factor}
    elif kind == "contamination":
        ratio = 0.3 + 2.7 * s
        exponent = float(rng.uniform(3.0, 4.0))
        new = replace(state, contamination_ratio=ratio, contamination_exponent=exponent)
        params = {"upturn_ratio": ratio, "exponent": exponent}
    elif kind == "degradation":
        factor = 0.75 - 0.45 * s
        new = replace(state, correlation_length_A=state.correlation_length_A * factor)
        params = {"correlation_length_factor": factor}
    elif kind == "thickness_error":
        magnitude = 0.15 + 0.35 * s
        sign = float(rng.choice([-1.0, 1.0]))
        new = replace(state, scale=state.scale * (1.0 + sign * magnitude))
        params = {"scale_factor": 1.0 + sign * magnitude}
    else:  # mislabelled
        recipes = list(system.recipes)
        here = recipes.index(state.label) if state.label in recipes else 0
        others = sorted(
            (r for r in recipes if r != state.label),
            key=lambda r: abs(recipes.index(r) - here),
        )
        if not others:
            raise ValueError("mislabelled needs a blend system with at least two recipes")
        # adjacent recipe at low severity, any other at high severity
        pool = others[:2] if s < 0.5 else others
        actual = str(rng.choice(pool))
        true_state = nominal_state(system, actual, rng)
        new = replace(true_state, label=state.label)
        params = {"actual_recipe": actual}
    return replace(new, kind=kind, severity=s, anomaly_params=params)
