"""Counts: 1D profiles and 2D detector frames of a specimen on an :class:`Instrument`.

Forward model for one pixel (or one q bin of summed pixels)::

    expected = flux * t * T_sample * (thickness * I_sample(q) + I_cell(q)) * dOmega * P * gain
               + dark_rate * t

with T_sample the transmission of specimen plus cell, I_cell the empty cell
(:func:`~pbi_bluesky.simulate.instrument.empty_cell_per_sr`), dOmega the pixel's absolute
solid angle and P its polarisation factor. Counts are Poisson. A reduction that divides
by flux*t*T*dOmega*P, subtracts the empty cell over its own transmission and divides by
the thickness recovers I_sample in 1/cm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pbi_bluesky.profile import Profile
from pbi_bluesky.simulate.instrument import PILATUS_SATURATION, Instrument, empty_cell_per_sr
from pbi_bluesky.simulate.scattering import SampleState
from pbi_bluesky.simulate.scattering import specimen_intensity_inv_cm as state_intensity_inv_cm

__all__ = [
    "INSTRUMENT_FAULTS",
    "RenderedFrame",
    "simulate_profile",
    "expected_profile_inv_cm",
    "render_frame",
    "render_empty_cell",
    "render_standard",
    "expected_dark",
    "WATER_INV_CM",
]

INSTRUMENT_FAULTS: tuple[str, ...] = (
    "hot_pixels",
    "dead_pixels",
    "beam_center_drift",
    "beamstop_misalignment",
    "parasitic_scattering",
    "beam_dump",
)
"""Faults of the instrument, not of the specimen; they act on 2D frames only."""


def expected_profile_inv_cm(state: SampleState, instrument: Instrument) -> NDArray[np.float64]:
    """Noise-free I(q) (1/cm) of ``state`` averaged over each q bin as its pixels sample it.

    This, not I at the bin centre, is what an integrated frame estimates: the bin average
    of a steep, convex curve lies above its value at the centre.
    """
    q_sub, response = instrument.bin_response
    return (state_intensity_inv_cm(state, q_sub) @ response) / instrument.bin_acceptance_sr


def simulate_profile(
    state: SampleState,
    instrument: Instrument,
    rng: np.random.Generator,
    *,
    exposure_s: float | None = None,
) -> Profile:
    """Simulate a reduced, empty-cell-subtracted, absolute profile of ``state`` with noise.

    The noise is counting noise: each q bin is one Poisson variable with the expected
    counts of all its unmasked pixels, so the result has the statistics of a
    rendered-and-integrated frame at a fraction of the cost. The empty cell is measured
    with the same exposure and subtracted.

    Parameters
    ----------
    state
        The specimen to simulate.
    instrument
        Beamline model: q bins, flux, detector and exposure.
    rng
        Source of the counting noise.
    exposure_s
        Exposure time; default ``instrument.exposure_s``.
    """
    t = instrument.exposure_s if exposure_s is None else exposure_s
    q = instrument.q_centers_inv_angstrom
    q_sub, response = instrument.bin_response
    acc = instrument.bin_acceptance_sr
    t_cell = instrument.empty_cell_transmission
    t_sample = t_cell * state.transmission
    cell_sub = empty_cell_per_sr(q_sub)
    sample_sub = state.thickness_cm * state_intensity_inv_cm(state, q_sub)
    # bin sums over pixels as pyFAI's bbox splitting shares them out
    beam = instrument.flux_ph_per_s * t
    exp_sample = beam * t_sample * ((sample_sub + cell_sub) @ response)
    exp_cell = beam * t_cell * instrument.empty_cell_response
    n_sample = rng.poisson(exp_sample).astype(np.float64)
    n_cell = rng.poisson(exp_cell).astype(np.float64)
    norm_sample = instrument.flux_ph_per_s * t * t_sample * acc
    norm_cell = instrument.flux_ph_per_s * t * t_cell * acc
    with np.errstate(invalid="ignore", divide="ignore"):  # bins with no pixels: NaN
        intensity = (n_sample / norm_sample - n_cell / norm_cell) / state.thickness_cm
        sigma = np.sqrt(n_sample / norm_sample**2 + n_cell / norm_cell**2) / state.thickness_cm
    return Profile(
        q,
        intensity,
        sigma,
        metadata={"units": "1/cm", "composition": state.label, "exposure_s": t},
        provenance={
            "source": "pbi_bluesky.simulate.simulate_profile",
            "model": "teubner_strey + porod + power_law + flat (sasmodels)",
            "detector": instrument.geometry.detector.name,  # type: ignore[attr-defined]
            "flux_ph_per_s": instrument.flux_ph_per_s,
            "npt": instrument.npt,
            "q_range_inv_angstrom": list(instrument.q_range_inv_angstrom),
            "empty_cell_subtracted": True,
            "thickness_cm": state.thickness_cm,
            "transmission": t_sample,
        },
    )


@dataclass
class RenderedFrame:
    """One simulated detector image and what the beamline would record with it."""

    frame: NDArray[np.int32]
    monitor: float
    """I0 monitor reading of the exposure: incident photons times the monitor's gain
    (``Instrument.monitor_counts_per_photon``, 1 by default)."""
    transmission: float
    """Measured transmission of specimen + cell."""
    exposure_s: float
    faults: dict[str, float] = field(default_factory=dict)
    truth: dict[str, Any] = field(default_factory=dict)


def expected_dark(instrument: Instrument, exposure_s: float | None = None) -> NDArray[np.float32]:
    """Mean dark frame (counts) for an exposure."""
    t = instrument.exposure_s if exposure_s is None else exposure_s
    return np.full(instrument.shape, instrument.dark_rate_per_s * t, dtype=np.float32)


def _scattering_map(
    instrument: Instrument, q_map: NDArray[np.float64], per_sr: Any
) -> NDArray[np.float64]:
    """Evaluate a 1D function of q on a pixel q map through a fine log grid."""
    q_lo = max(float(q_map.min()), 1e-5)
    q_grid = np.geomspace(q_lo, float(q_map.max()) * 1.001, 4096)
    return np.interp(np.log(np.maximum(q_map, q_lo)), np.log(q_grid), per_sr(q_grid))


def _render(
    instrument: Instrument,
    per_sr: Any,
    transmission: float,
    exposure_s: float,
    rng: np.random.Generator,
    faults: dict[str, float],
) -> tuple[NDArray[np.int32], float]:
    """Render counts for a total scattering ``per_sr(q)`` (photons/photon/sr)."""
    q_map = instrument.q_map_inv_angstrom
    shadow_offset = (0.0, 0.0)
    if "beam_center_drift" in faults:
        s = faults["beam_center_drift"]
        shift = 1.0 + 9.0 * s
        angle = rng.uniform(0, 2 * np.pi)
        geo = instrument.geometry
        shifted = type(geo)(
            dist=geo.dist,
            poni1=geo.poni1 + shift * np.sin(angle) * geo.detector.pixel1,
            poni2=geo.poni2 + shift * np.cos(angle) * geo.detector.pixel2,
            detector=geo.detector,
            wavelength=geo.wavelength,
        )
        q_map = np.asarray(shifted.qArray(instrument.shape)) / 10.0
        shadow_offset = (shift * np.cos(angle), shift * np.sin(angle))
    if "beamstop_misalignment" in faults:
        s = faults["beamstop_misalignment"]
        off = 3.0 + 17.0 * s
        angle = rng.uniform(0, 2 * np.pi)
        dx, dy = off * np.cos(angle), off * np.sin(angle)
        shadow_offset = (shadow_offset[0] + dx, shadow_offset[1] + dy)
    # the beam fluctuates (0.2 % rms); the I0 monitor follows it to 1e-4, with its gain
    flux_time = instrument.flux_ph_per_s * exposure_s * (1.0 + rng.normal(0, 0.002))
    monitor = flux_time * (1.0 + rng.normal(0, 1e-4)) * instrument.monitor_counts_per_photon
    scatter = _scattering_map(instrument, q_map, per_sr)
    if "parasitic_scattering" in faults:
        s = faults["parasitic_scattering"]
        ny, nx = instrument.shape
        cx, cy = instrument.beam_center_px
        yy, xx = np.ogrid[0:ny, 0:nx]
        streak = np.exp(-np.abs(yy + 0.5 - cy) / 2.0) + np.exp(-np.abs(xx + 0.5 - cx) / 2.0)
        radius = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) + 5.0
        scatter = scatter + (0.05 + 0.95 * s) * 2.0 * streak * (30.0 / radius) ** 2
    expected = (
        flux_time
        * transmission
        * scatter
        * instrument.solid_angle_sr
        * instrument.polarization
        * instrument.flat_field
    )
    if "beam_dump" in faults:
        # the beam is lost for part of the exposure; the I0 reading taken at the start
        # does not see it, so normalisation is wrong
        expected = expected * (0.8 - 0.6 * faults["beam_dump"])
    shadow = instrument.beamstop_shadow(shadow_offset)
    if "beamstop_misalignment" in faults:
        # the direct-beam halo normally caught by the beamstop leaks out
        ny, nx = instrument.shape
        cx, cy = instrument.beam_center_px
        yy, xx = np.ogrid[0:ny, 0:nx]
        halo = np.exp(-np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) / 6.0) * flux_time * 1e-6
        expected = expected + halo
    expected = np.where(shadow, expected * 1e-4, expected)
    expected = expected + instrument.dark_rate_per_s * exposure_s
    counts = rng.poisson(expected).astype(np.int64)
    if "hot_pixels" in faults:
        n = int(5 + 95 * faults["hot_pixels"])
        idx = rng.integers(0, counts.size, n)
        counts.flat[idx] = rng.integers(200_000, PILATUS_SATURATION, n)
    if "dead_pixels" in faults:
        size = int(4 + 36 * faults["dead_pixels"])
        ny, nx = instrument.shape
        y0 = int(rng.integers(ny // 2 - 150, ny // 2 + 150 - size))
        x0 = int(rng.integers(nx // 2 - 150, nx // 2 + 150 - size))
        counts[y0 : y0 + size, x0 : x0 + size] = 0
    counts = np.minimum(counts, PILATUS_SATURATION)
    counts[instrument.detector_mask] = -1  # module gaps, as a Pilatus writes them
    return counts.astype(np.int32), float(monitor)


def _check_faults(faults: dict[str, float] | None) -> dict[str, float]:
    faults = dict(faults or {})
    for name, severity in faults.items():
        if name not in INSTRUMENT_FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(INSTRUMENT_FAULTS)}")
        if not 0.0 <= severity <= 1.0:
            raise ValueError(f"fault severity must be in [0, 1], got {name}={severity}")
    return faults


def render_frame(
    state: SampleState,
    instrument: Instrument,
    rng: np.random.Generator,
    *,
    exposure_s: float | None = None,
    faults: dict[str, float] | None = None,
) -> RenderedFrame:
    """Render a detector frame of ``state`` in its cell (int32 counts, gaps = -1).

    Parameters
    ----------
    state
        The specimen; the cell's own scattering is added.
    instrument
        Beamline model: detector, flux, exposure, beamstop, dark and flat field.
    rng
        Source of the counting noise.
    exposure_s
        Exposure time (> 0); default ``instrument.exposure_s``.
    faults
        Instrument-fault names (:data:`INSTRUMENT_FAULTS`) mapped to a severity in [0, 1].
    """
    faults = _check_faults(faults)
    t = instrument.exposure_s if exposure_s is None else float(exposure_s)
    if t <= 0:
        raise ValueError(f"exposure must be > 0 s, got {t}")
    t_sample = instrument.empty_cell_transmission * state.transmission

    def per_sr(q: NDArray[np.float64]) -> NDArray[np.float64]:
        return state.thickness_cm * state_intensity_inv_cm(state, q) + empty_cell_per_sr(q)

    frame, monitor = _render(instrument, per_sr, t_sample, t, rng, faults)
    measured_t = t_sample * (1.0 + rng.normal(0, 1e-4))
    return RenderedFrame(frame, monitor, measured_t, t, faults, state.truth())


def render_empty_cell(
    instrument: Instrument, rng: np.random.Generator, *, exposure_s: float | None = None
) -> RenderedFrame:
    """Render the empty cell (background frame), measured like a sample."""
    t = instrument.exposure_s if exposure_s is None else float(exposure_s)
    t_cell = instrument.empty_cell_transmission
    frame, monitor = _render(instrument, empty_cell_per_sr, t_cell, t, rng, {})
    return RenderedFrame(frame, monitor, t_cell, t, {}, {"kind": "empty_cell"})


WATER_INV_CM = 0.01632
"""dSigma/dOmega of water at 20 C (1/cm), flat at SAXS q: the standard rendered below."""
WATER_ATTENUATION_INV_CM = 2.9
"""Linear attenuation of water at 12.4 keV (1 A), 1/cm (mass attenuation ~2.9 cm^2/g)."""


def render_standard(
    instrument: Instrument, rng: np.random.Generator, *, thickness_cm: float = 0.1,
    exposure_s: float = 10.0,
) -> RenderedFrame:
    """Render water in the sample cell: the secondary standard of absolute intensity.

    Water scatters ``WATER_INV_CM`` (1/cm) at every SAXS q; the frame holds the cell's own
    scattering as well, so it is calibrated against :func:`render_empty_cell`.

    Parameters
    ----------
    instrument
        Beamline model.
    rng
        Source of the counting noise.
    thickness_cm
        Water thickness (> 0).
    exposure_s
        Exposure time (> 0).
    """
    if thickness_cm <= 0 or exposure_s <= 0:
        raise ValueError("thickness and exposure must be > 0")
    t_sample = instrument.empty_cell_transmission * float(
        np.exp(-WATER_ATTENUATION_INV_CM * thickness_cm))

    def per_sr(q: NDArray[np.float64]) -> NDArray[np.float64]:
        return thickness_cm * WATER_INV_CM + empty_cell_per_sr(q)

    frame, monitor = _render(instrument, per_sr, t_sample, exposure_s, rng, {})
    measured_t = t_sample * (1.0 + rng.normal(0, 1e-4))
    return RenderedFrame(frame, monitor, measured_t, exposure_s, {},
                         {"kind": "water", "thickness_cm": thickness_cm,
                          "dsigma_domega_inv_cm": WATER_INV_CM})
