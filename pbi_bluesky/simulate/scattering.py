"""Absolute-scale I(q) of a blend sample, built from sasmodels kernels.

The scattering of a sample is the sum of

* a Teubner-Strey term (sasmodels ``teubner_strey``) for the bicontinuous nanostructure
  of a compatibilised blend: correlation peak near 2*pi/d, width set by xi;
* a Porod term (sasmodels ``porod``) 2*pi*drho^2*(S/V)/q^4 for macrophase interfaces;
* a flat thermal density-fluctuation background, volume-weighted over components;
* an optional contamination term (dust, filler aggregates or voids): a power law that
  raises the lowest q.

All terms are in 1/cm with q in 1/angstrom. A thickness/transmission error multiplies the
whole curve (the normalisation used the wrong thickness).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from pbi_bluesky.simulate.recipes import BlendSystem, parse_recipe

__all__ = ["SampleState", "Specimen", "nominal_state", "intensity_inv_cm",
           "specimen_intensity_inv_cm", "CONTAMINATION_Q_REF"]

CONTAMINATION_Q_REF = 0.007
"""q (1/angstrom) at which a contamination's strength is specified, relative to the clean curve."""


@dataclass(frozen=True)
class SampleState:
    """The true physical state of one specimen (what the simulator renders).

    ``label`` is the recipe written on the sample; the remaining fields are the truth,
    which differs from the nominal recipe by batch-to-batch scatter and, for anomalous
    samples, by the anomaly (``kind``/``severity``/``anomaly_params`` record which).
    """

    system: BlendSystem
    label: str
    weight_fraction_a: float
    domain_spacing_A: float
    correlation_length_A: float
    interface_factor: float = 1.0
    background_factor: float = 1.0
    scale: float = 1.0
    contamination_ratio: float = 0.0
    contamination_exponent: float = 3.0
    thickness_cm: float = 0.1
    kind: str = "normal"
    severity: float = 0.0
    anomaly_params: dict[str, Any] = field(default_factory=dict)

    @property
    def is_anomaly(self) -> bool:
        """True when the specimen carries a simulated anomaly."""
        return self.kind != "normal"

    @property
    def volume_fraction_a(self) -> float:
        """True volume fraction of component A."""
        return self.system.volume_fraction_a(self.weight_fraction_a)

    @property
    def transmission(self) -> float:
        """X-ray transmission exp(-mu * t) of the specimen."""
        mu = self.system.attenuation_inv_cm(self.weight_fraction_a)
        return float(np.exp(-mu * self.thickness_cm))

    def truth(self) -> dict[str, Any]:
        """Flat, JSON-ready description of the true state (without the blend system)."""
        data = asdict(self)
        data.pop("system")
        data["system"] = self.system.name
        return data


def nominal_state(
    system: BlendSystem, recipe: str, rng: np.random.Generator | None = None
) -> SampleState:
    """Draw a normal specimen of ``recipe``: nominal structure plus batch-to-batch scatter.

    With ``rng=None`` the exact nominal state is returned (no scatter).
    """
    w_nominal = parse_recipe(recipe)
    scatter = system.batch_scatter
    if rng is None:
        w = w_nominal
        jitter = dict.fromkeys(("d", "xi", "iface", "bg", "scale"), 1.0)
    else:
        w = float(np.clip(w_nominal + rng.normal(0, scatter["weight_fraction"]), 0.0, 1.0))
        if w_nominal in (0.0, 1.0):
            w = w_nominal  # a pure polymer stays pure
        jitter = {
            "d": 1 + rng.normal(0, scatter["domain_spacing"]),
            "xi": 1 + rng.normal(0, scatter["correlation_length"]),
            "iface": 1 + rng.normal(0, scatter["interface"]),
            "bg": 1 + rng.normal(0, scatter["background"]),
            "scale": 1 + rng.normal(0, scatter["scale"]),
        }
    d, xi = system.structure_at(w)
    return SampleState(
        system=system,
        label=recipe,
        weight_fraction_a=w,
        domain_spacing_A=d * jitter["d"],
        correlation_length_A=xi * jitter["xi"],
        interface_factor=jitter["iface"],
        background_factor=jitter["bg"],
        scale=jitter["scale"],
        thickness_cm=system.thickness_cm,
    )


@lru_cache(maxsize=8)
def _model(name: str) -> Any:
    from sasmodels.core import load_model

    return load_model(name)


_KERNELS: dict[tuple[str, str], Any] = {}


def _kernel(name: str, q_inv_angstrom: NDArray[np.float64]) -> Any:
    key = (name, hashlib.sha1(np.ascontiguousarray(q_inv_angstrom).tobytes()).hexdigest())
    kernel = _KERNELS.get(key)
    if kernel is None:
        if len(_KERNELS) > 64:
            _KERNELS.clear()
        kernel = _model(name).make_kernel([np.asarray(q_inv_angstrom, dtype=np.float64)])
        _KERNELS[key] = kernel
    return kernel


def _call(name: str, q: NDArray[np.float64], **pars: float) -> NDArray[np.float64]:
    from sasmodels.direct_model import call_kernel

    return np.asarray(call_kernel(_kernel(name, q), pars), dtype=np.float64)


def clean_intensity_inv_cm(
    state: SampleState, q_inv_angstrom: NDArray[np.float64]
) -> NDArray[np.float64]:
    """I(q) of the specimen without contamination and without the scale error."""
    q = np.asarray(q_inv_angstrom, dtype=np.float64)
    system = state.system
    phi = state.volume_fraction_a
    drho = system.contrast_1e6_inv_A2()
    a, b = system.component_a, system.component_b
    background = (
        phi * a.fluctuation_background_inv_cm + (1 - phi) * b.fluctuation_background_inv_cm
    ) * state.background_factor
    total = np.full_like(q, background)
    if 0.0 < phi < 1.0:
        total += _call(
            "teubner_strey",
            q,
            scale=1.0,
            background=0.0,
            volfraction_a=phi,
            sld_a=a.sld_1e6_inv_A2,
            sld_b=b.sld_1e6_inv_A2,
            d=state.domain_spacing_A,
            xi=state.correlation_length_A,
        )
        area = system.interface_area_per_volume_inv_cm * 4 * phi * (1 - phi)
        porod_constant = 2 * np.pi * (drho * 1e-6) ** 2 * area * state.interface_factor
        total += _call("porod", q, scale=porod_constant, background=0.0)
    return total


def intensity_inv_cm(
    state: SampleState, q_inv_angstrom: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Absolute I(q) in 1/cm that a correctly normalised measurement of ``state`` shows."""
    q = np.asarray(q_inv_angstrom, dtype=np.float64)
    clean = clean_intensity_inv_cm(state, q)
    if state.contamination_ratio > 0:
        q_ref = np.array([CONTAMINATION_Q_REF])
        level = clean_intensity_inv_cm(replace(state, contamination_ratio=0.0), q_ref)[0]
        p = state.contamination_exponent
        amplitude = state.contamination_ratio * level * CONTAMINATION_Q_REF**p
        clean = clean + _call("power_law", q, scale=amplitude, background=0.0, power=p)
    return clean * state.scale


@runtime_checkable
class Specimen(Protocol):
    """What the renderer needs of any specimen.

    A blend :class:`SampleState`, or a state of another physics family that computes its
    own I(q).
    """

    label: str
    thickness_cm: float
    kind: str

    @property
    def transmission(self) -> float:
        """X-ray transmission of the specimen."""

    def truth(self) -> dict[str, Any]:
        """Flat, JSON-ready description of the true state."""


def specimen_intensity_inv_cm(state: Any, q_inv_angstrom: NDArray[np.float64]
                              ) -> NDArray[np.float64]:
    """Return the absolute I(q) in 1/cm of any specimen.

    Its own ``intensity_inv_cm(q)`` method if it has one (other physics families), else
    :func:`intensity_inv_cm` (the blends).
    """
    own = getattr(state, "intensity_inv_cm", None)
    if callable(own):
        return np.asarray(own(np.asarray(q_inv_angstrom, dtype=np.float64)), dtype=np.float64)
    return intensity_inv_cm(state, q_inv_angstrom)
