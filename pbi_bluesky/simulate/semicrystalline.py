"""A second physics family: filled semicrystalline polyethylene.

HDPE with fumed-silica filler, written independently of the blends.

It exists to test the detector on physics and anomalies its training never mirrored
(the synthetic negatives of :mod:`pbi_bluesky.models.augment` copy the blend catalogue
of :mod:`~.anomalies` nearly parameter for parameter). Absolute I(q) in 1/cm, from
sasmodels kernels:

* crystalline lamellae stacked with a long period L ~ 200 A in an amorphous matrix
  (crystal SLD 9.68, amorphous 8.28 x 1e-6/A^2, crystallinity ~0.55): a first-order
  long-period peak near 2*pi/L and a weaker second order (``broad_peak`` shapes), scaled to
  the two-phase invariant 2 pi^2 phi_c (1 - phi_c) drho^2;
* silica primary particles (``sphere``, radius ~70 A with 20 % Schulz polydispersity,
  SLD 18.7 in a matrix of 9.2), part of them clustered into fractal aggregates
  (``guinier_porod``, Rg ~ 400 A, mass-fractal exponent 2.5);
* a flat density-fluctuation background.

Recipes are filler loadings (volume fraction of silica): ``PE+0%SiO2`` ... ``PE+4%SiO2``.

Anomaly kinds (:data:`FILLED_ANOMALIES`), none of which the training transforms copy:

=====================  ==================================================================
``crystal_peak``       a new Bragg-like reflection (a crystallising additive or a new
                       polymorph): Gaussian peak at q 0.06-0.16 1/A, sigma 0.002-0.004,
                       height 0.05-1x the local intensity
``bimodal_lamellae``   bimodal domain sizes: 15-50 % of the lamellae in a second
                       population with a 1.35-1.75x longer period
``window_scattering``  window/air parasitic scattering not removed by the empty cell: a
                       flat air term plus a broad window hump at q 0.11-0.15 1/A, together
                       0.05-1x the sample's intensity there
``smearing``           a change of instrumental smearing (beam size / divergence): the
                       curve convolved with a Gaussian of sigma_q 0.0012-0.0045 1/A
``radiation_damage``   aggregation growing over repeated frames of one sample
                       (:func:`damage_series`): compact aggregates whose scattering at
                       q = 0.01 1/A grows linearly with dose to 0.1-2x the clean curve,
                       and a loss of crystallinity of up to 10 %
=====================  ==================================================================

Severity 0 is meant to be barely visible (a few % somewhere on the curve, against
batch-to-batch scatter of about 5 %), severity 1 obvious, as in the blend catalogue.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pbi_bluesky.simulate.scattering import _call as sas_call

__all__ = [
    "FILLED_ANOMALIES",
    "FILLED_PE",
    "FilledPolymer",
    "FilledState",
    "apply_filled_anomaly",
    "damage_series",
    "nominal_filled_state",
]

FILLED_ANOMALIES: tuple[str, ...] = (
    "crystal_peak",
    "bimodal_lamellae",
    "window_scattering",
    "smearing",
    "radiation_damage",
)
DAMAGE_Q_REF = 0.01


@dataclass(frozen=True)
class FilledPolymer:
    """A filled semicrystalline polymer system and its recipes (filler volume fractions)."""

    name: str = "HDPE/fumed silica"
    recipes: dict[str, float] = field(default_factory=lambda: {
        "PE+0%SiO2": 0.0, "PE+1%SiO2": 0.01, "PE+2%SiO2": 0.02, "PE+4%SiO2": 0.04})
    sld_crystal: float = 9.68
    sld_amorphous: float = 8.28
    sld_filler: float = 18.7
    long_period_A: float = 200.0
    crystallinity: float = 0.55
    peak_width_A: float = 90.0
    """Correlation length of the long-period peak (its width ~ 2 / this)."""
    particle_radius_A: float = 70.0
    particle_polydispersity: float = 0.2
    aggregate_fraction: float = 0.25
    aggregate_rg_A: float = 300.0
    aggregate_exponent: float = 2.5
    background_inv_cm: float = 0.05
    attenuation_matrix_inv_cm: float = 2.2
    attenuation_filler_inv_cm: float = 20.0
    thickness_cm: float = 0.1
    batch_scatter: dict[str, float] = field(default_factory=lambda: {
        "long_period": 0.02, "crystallinity": 0.03, "filler": 0.03, "aggregate": 0.10,
        "radius": 0.02, "background": 0.03, "scale": 0.02})

    @property
    def labels(self) -> tuple[str, ...]:
        """Recipe names, in order."""
        return tuple(self.recipes)


FILLED_PE = FilledPolymer()


@dataclass(frozen=True)
class FilledState:
    """The true state of one filled-polymer specimen (renders itself)."""

    system: FilledPolymer
    label: str
    filler_fraction: float
    long_period_A: float
    crystallinity: float
    particle_radius_A: float
    aggregate_fraction: float
    background_factor: float = 1.0
    scale: float = 1.0
    thickness_cm: float = 0.1
    # anomaly terms (zero: absent)
    peak_q: float = 0.0
    peak_sigma: float = 0.0
    peak_ratio: float = 0.0
    second_period_factor: float = 0.0
    second_fraction: float = 0.0
    window_ratio: float = 0.0
    window_q: float = 0.13
    smearing_sigma_q: float = 0.0
    damage_ratio: float = 0.0
    kind: str = "normal"
    severity: float = 0.0
    anomaly_params: dict[str, Any] = field(default_factory=dict)

    @property
    def is_anomaly(self) -> bool:
        """True unless the specimen is normal."""
        return self.kind != "normal"

    @property
    def transmission(self) -> float:
        """X-ray transmission exp(-mu * t) of the specimen (matrix and filler)."""
        s = self.system
        mu = ((1 - self.filler_fraction) * s.attenuation_matrix_inv_cm
              + self.filler_fraction * s.attenuation_filler_inv_cm)
        return float(np.exp(-mu * self.thickness_cm))

    def truth(self) -> dict[str, Any]:
        """Flat, JSON-ready description of the true state (without the system)."""
        data = asdict(self)
        data.pop("system")
        data["system"] = self.system.name
        return data

    # -- scattering ---------------------------------------------------------------------
    def _lamellae(self, q: NDArray, period: float, fraction: float) -> NDArray:
        """Return the long-period scattering of crystalline lamellae.

        A first- and a weaker second-order peak (``broad_peak``, squared-Lorentzian shape),
        scaled so that their invariant is the two-phase value 2 pi^2 phi_c (1 - phi_c)
        drho^2 of this fraction of the specimen (``fraction`` of its volume in stacks of
        crystallinity phi_c).
        """
        s = self.system
        q0 = 2 * np.pi / period
        shape = _lamellar_shape(q, q0, s.peak_width_A)
        norm = _lamellar_invariant(q0, s.peak_width_A)
        phi = self.crystallinity
        invariant = 2 * np.pi**2 * phi * (1 - phi) * (s.sld_crystal - s.sld_amorphous) ** 2
        return fraction * invariant * 1e-4 * shape / norm

    def _clean(self, q: NDArray) -> NDArray:
        """Lamellae + filler + background, no anomaly term (1/cm)."""
        s = self.system
        matrix = 1.0 - self.filler_fraction
        first = 1.0 - self.second_fraction
        total = np.full_like(q, s.background_inv_cm * self.background_factor)
        total += self._lamellae(q, self.long_period_A, matrix * first)
        if self.second_fraction > 0:
            total += self._lamellae(q, self.long_period_A * self.second_period_factor,
                                    matrix * self.second_fraction)
        if self.filler_fraction > 0:
            sld_matrix = (self.crystallinity * s.sld_crystal
                          + (1 - self.crystallinity) * s.sld_amorphous)
            free = self.filler_fraction * (1 - self.aggregate_fraction)
            total += sas_call("sphere", q, scale=free, background=0.0, sld=s.sld_filler,
                              sld_solvent=sld_matrix, radius=self.particle_radius_A,
                              radius_pd=s.particle_polydispersity, radius_pd_n=15,
                              radius_pd_type="schulz")
            # aggregates: the same material clustered; scaled so that their forward
            # scattering per volume of filler follows the primary particles' at Rg
            per_particle = sas_call("sphere", np.array([1e-4]), scale=1.0, background=0.0,
                                    sld=s.sld_filler, sld_solvent=sld_matrix,
                                    radius=self.particle_radius_A)[0]
            n_per = (s.aggregate_rg_A / self.particle_radius_A) ** s.aggregate_exponent
            amp = self.filler_fraction * self.aggregate_fraction * per_particle * n_per
            total += amp * sas_call("guinier_porod", q, scale=1.0, background=0.0,
                                    rg=s.aggregate_rg_A, s=0.0,
                                    porod_exp=s.aggregate_exponent)
        return total

    def intensity_inv_cm(self, q: NDArray) -> NDArray:
        """Absolute I(q) in 1/cm of this specimen (q in 1/A)."""
        q = np.asarray(q, dtype=np.float64)
        if self.smearing_sigma_q > 0:
            out = _smeared(self._unsmeared, q, self.smearing_sigma_q)
        else:
            out = self._unsmeared(q)
        return out * self.scale

    def _unsmeared(self, q: NDArray) -> NDArray:
        clean = self._clean(q)
        if self.peak_ratio > 0:
            level = float(self._clean(np.array([self.peak_q]))[0])
            clean = clean + sas_call("gaussian_peak", q, scale=self.peak_ratio * level,
                                     background=0.0, peak_pos=self.peak_q,
                                     sigma=self.peak_sigma)
        if self.window_ratio > 0:
            level = float(self._clean(np.array([self.window_q]))[0])
            hump = sas_call("broad_peak", q, scale=1.0, background=0.0, porod_scale=0.0,
                            porod_exp=3.0, peak_scale=1.0, correlation_length=40.0,
                            peak_pos=self.window_q, width_exp=2.0, shape_exp=1.0)
            clean = clean + self.window_ratio * level * (0.4 + 0.6 * hump)
        if self.damage_ratio > 0:
            ref = np.array([DAMAGE_Q_REF])
            level = float(self._clean(ref)[0])
            shape = sas_call("guinier_porod", q, scale=1.0, background=0.0, rg=250.0, s=0.0,
                             porod_exp=4.0)
            at_ref = sas_call("guinier_porod", ref, scale=1.0, background=0.0, rg=250.0,
                              s=0.0, porod_exp=4.0)[0]
            clean = clean + self.damage_ratio * level * shape / at_ref
        return clean


def _lamellar_shape(q: NDArray, q0: float, xi: float) -> NDArray:
    first = sas_call("broad_peak", q, scale=1.0, background=0.0, porod_scale=0.0,
                     porod_exp=3.0, peak_scale=1.0, correlation_length=xi, peak_pos=q0,
                     width_exp=2.0, shape_exp=2.0)
    second = sas_call("broad_peak", q, scale=1.0, background=0.0, porod_scale=0.0,
                      porod_exp=3.0, peak_scale=0.15, correlation_length=0.6 * xi,
                      peak_pos=2 * q0, width_exp=2.0, shape_exp=2.0)
    return first + second


_INVARIANTS: dict[tuple[float, float], float] = {}


def _lamellar_invariant(q0: float, xi: float) -> float:
    """Integral of q^2 times the peak shape over q (numerically, cached)."""
    key = (round(q0, 12), round(xi, 9))
    if key not in _INVARIANTS:
        if len(_INVARIANTS) > 4096:
            _INVARIANTS.clear()
        grid = np.linspace(1e-4, 3.0, 60000)
        _INVARIANTS[key] = float(np.trapezoid(grid**2 * _lamellar_shape(grid, q0, xi), grid))
    return _INVARIANTS[key]


def _smeared(fn, q: NDArray, sigma_q: float) -> NDArray:
    """``fn`` convolved with a Gaussian of width ``sigma_q`` in q, at the points ``q``."""
    lo = max(float(q.min()) - 5 * sigma_q, 1e-4)
    hi = float(q.max()) + 5 * sigma_q
    step = sigma_q / 4.0
    fine = np.arange(lo, hi + step, step)
    values = fn(fine)
    half = int(np.ceil(5 * sigma_q / step))
    x = np.arange(-half, half + 1) * step
    kernel = np.exp(-0.5 * (x / sigma_q) ** 2)
    kernel /= kernel.sum()
    padded = np.concatenate([np.full(half, values[0]), values, np.full(half, values[-1])])
    smooth = np.convolve(padded, kernel, mode="valid")
    return np.interp(q, fine, smooth)


def nominal_filled_state(system: FilledPolymer, recipe: str,
                         rng: np.random.Generator | None = None) -> FilledState:
    """Draw a normal specimen of ``recipe`` with batch-to-batch scatter (none with rng=None)."""
    if recipe not in system.recipes:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(system.recipes)}")
    sc = system.batch_scatter

    def jitter(key: str) -> float:
        return 1.0 if rng is None else float(1.0 + rng.normal(0.0, sc[key]))

    return FilledState(
        system=system, label=recipe,
        filler_fraction=system.recipes[recipe] * jitter("filler"),
        long_period_A=system.long_period_A * jitter("long_period"),
        crystallinity=float(np.clip(system.crystallinity * jitter("crystallinity"), 0.2, 0.9)),
        particle_radius_A=system.particle_radius_A * jitter("radius"),
        aggregate_fraction=float(np.clip(system.aggregate_fraction * jitter("aggregate"),
                                         0.0, 1.0)),
        background_factor=jitter("background"), scale=jitter("scale"),
        thickness_cm=system.thickness_cm)


def apply_filled_anomaly(state: FilledState, kind: str, severity: float,
                         rng: np.random.Generator) -> FilledState:
    """``state`` changed by anomaly ``kind`` at ``severity`` in [0, 1] (0 subtle, 1 obvious).

    ``radiation_damage`` here is the last frame of a series; :func:`damage_series` gives
    every frame.

    Parameters
    ----------
    state
        A normal specimen (:func:`nominal_filled_state`).
    kind
        One of :data:`FILLED_ANOMALIES`.
    severity
        In [0, 1].
    rng
        Draws the random parts of the change (peak position and width, window hump...).

    Raises
    ------
    ValueError
        For a severity outside [0, 1] or an unknown kind.
    """
    s = float(severity)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    if kind == "crystal_peak":
        new = replace(state, peak_q=float(rng.uniform(0.06, 0.16)),
                      peak_sigma=float(rng.uniform(0.002, 0.004)), peak_ratio=0.05 + 0.95 * s)
        params = {"peak_q": new.peak_q, "peak_sigma": new.peak_sigma, "ratio": new.peak_ratio}
    elif kind == "bimodal_lamellae":
        new = replace(state, second_period_factor=1.35 + 0.4 * s,
                      second_fraction=0.15 + 0.35 * s)
        params = {"period_factor": new.second_period_factor, "fraction": new.second_fraction}
    elif kind == "window_scattering":
        new = replace(state, window_ratio=0.05 + 0.95 * s,
                      window_q=float(rng.uniform(0.11, 0.15)))
        params = {"ratio": new.window_ratio, "window_q": new.window_q}
    elif kind == "smearing":
        new = replace(state, smearing_sigma_q=0.0012 + 0.0033 * s)
        params = {"sigma_q": new.smearing_sigma_q}
    elif kind == "radiation_damage":
        return damage_series(state, s, 2)[-1]
    else:
        raise ValueError(f"unknown anomaly kind {kind!r}; known: {', '.join(FILLED_ANOMALIES)}")
    return replace(new, kind=kind, severity=s, anomaly_params=params)


def damage_series(state: FilledState, severity: float, n_frames: int) -> list[FilledState]:
    """Return ``n_frames`` repeated exposures of one specimen under radiation damage.

    Frame 0 is undamaged, then the aggregate scattering grows linearly with dose to
    ``0.1 + 1.9 * severity`` times the clean curve at q = 0.01 1/A, and up to 10 % of the
    crystallinity is lost.
    """
    if n_frames < 2:
        raise ValueError("a damage series needs at least 2 frames")
    final = 0.1 + 1.9 * float(severity)
    out = [state]
    for k in range(1, n_frames):
        dose = k / (n_frames - 1)
        out.append(replace(state, damage_ratio=final * dose,
                           crystallinity=state.crystallinity * (1 - 0.1 * dose * severity),
                           kind="radiation_damage", severity=float(severity),
                           anomaly_params={"frame": k, "dose": dose,
                                           "ratio": final * dose}))
    return out
