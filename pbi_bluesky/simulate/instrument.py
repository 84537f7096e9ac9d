"""The simulated SAXS instrument: detector geometry, beam, beamstop, cell, and noise.

An :class:`Instrument` is a real pyFAI geometry (``AzimuthalIntegrator``, writable as a
PONI file) plus the beam and sample-environment parameters needed to predict counts:
incident flux, exposure, polarisation, beamstop, empty-cell (window + air) scattering,
dark current and an optional flat field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Instrument",
    "make_geometry",
    "empty_cell_per_sr",
    "DEFAULT_Q_RANGE",
]

DEFAULT_Q_RANGE: tuple[float, float] = (0.007, 0.20)
"""q range (1/angstrom) of the default instrument: outside the beamstop, inside full rings."""

PILATUS_SATURATION = 2**20 - 1


def make_geometry(
    detector: str = "Pilatus1M",
    distance_m: float = 3.0,
    wavelength_angstrom: float = 1.0,
    beam_center_px: tuple[float, float] | None = None,
):
    """Build a pyFAI ``AzimuthalIntegrator`` for a real detector with no tilt.

    Parameters
    ----------
    detector
        Any name ``pyFAI.detector_factory`` knows: ``"Pilatus300k"``, ``"Pilatus1M"``,
        ``"Eiger4M"``...
    distance_m
        Sample-to-detector distance.
    wavelength_angstrom
        X-ray wavelength (1 A = 12.4 keV).
    beam_center_px
        Direct-beam position (x, y) in pixels; default near the detector middle.
    """
    import pyFAI
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    det = pyFAI.detector_factory(detector)
    ny, nx = det.shape
    cx, cy = beam_center_px if beam_center_px is not None else (nx / 2 + 0.3, ny / 2 + 0.7)
    ai = AzimuthalIntegrator(detector=det, wavelength=wavelength_angstrom * 1e-10)
    ai.setFit2D(distance_m * 1000.0, cx, cy)
    return ai


def empty_cell_per_sr(q_inv_angstrom: NDArray[np.float64]) -> NDArray[np.float64]:
    """Scattering of the empty cell (windows + air path), photons per incident photon per sr.

    A flat window/air term plus a q^-3 parasitic tail from window surfaces and slits.
    """
    q = np.asarray(q_inv_angstrom, dtype=np.float64)
    return 2.0e-4 + 1.0e-9 * q**-3.0


@dataclass
class Instrument:
    """A SAXS beamline as far as the counts on the detector are concerned.

    Parameters
    ----------
    geometry
        pyFAI ``AzimuthalIntegrator`` (detector, distance, beam centre, wavelength).
    flux_ph_per_s
        Incident photons per second on the sample.
    exposure_s
        Default exposure time.
    polarization_factor
        Beam polarisation factor as pyFAI defines it (0.99 for an undulator).
    beamstop_radius_px
        Radius of the beamstop shadow around the direct beam; an arm runs to the bottom edge.
    empty_cell_transmission
        Transmission of the cell windows alone.
    dark_rate_per_s
        Mean dark counts per pixel per second.
    flat_field_rms
        Relative pixel-gain scatter (0 = ideal flat field).
    q_range_inv_angstrom, npt
        The fixed q grid of reduced profiles (linear bins, pyFAI style).
    monitor_counts_per_photon
        Gain of the incident-flux (I0) monitor: the counts it reports per photon on the
        sample. A real monitor's gain is unknown until a standard of known cross-section
        is measured (``pbi calibrate-absolute``); the absolute scale factor found is this
        gain. 1 (the default) makes the nominal scale absolute.
    """

    geometry: object = field(default_factory=make_geometry)
    flux_ph_per_s: float = 1.0e12
    exposure_s: float = 1.0
    polarization_factor: float = 0.99
    beamstop_radius_px: float = 15.0
    empty_cell_transmission: float = 0.95
    dark_rate_per_s: float = 0.01
    flat_field_rms: float = 0.0
    flat_field_seed: int = 12345
    q_range_inv_angstrom: tuple[float, float] = DEFAULT_Q_RANGE
    npt: int = 400
    monitor_counts_per_photon: float = 1.0

    # -- static per-pixel arrays (computed once) ----------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """Detector shape (rows, columns)."""
        return tuple(self.geometry.detector.shape)  # type: ignore[attr-defined]

    @property
    def beam_center_px(self) -> tuple[float, float]:
        """Direct-beam position (x, y) in pixels."""
        f2d = self.geometry.getFit2D()  # type: ignore[attr-defined]
        return float(f2d["centerX"]), float(f2d["centerY"])

    @cached_property
    def q_map_inv_angstrom(self) -> NDArray[np.float64]:
        """Q at every pixel centre, 1/angstrom (float64, from a private copy of the geometry).

        A copy, because pyFAI caches its pixel arrays on the integrator and an integrator
        set up for reduction first may cache them at lower precision (~1e-4 relative).
        """
        return np.asarray(self._fresh_geometry().qArray(self.shape), dtype=np.float64) / 10.0

    @cached_property
    def solid_angle_sr(self) -> NDArray[np.float64]:
        """Absolute solid angle of every pixel (sr)."""
        return np.asarray(self.geometry.solidAngleArray(self.shape, absolute=True))

    @cached_property
    def polarization(self) -> NDArray[np.float64]:
        """Polarisation factor of every pixel."""
        return np.asarray(self.geometry.polarization(self.shape, factor=self.polarization_factor))

    @cached_property
    def flat_field(self) -> NDArray[np.float32]:
        """Relative pixel gain (ones when ``flat_field_rms`` is 0)."""
        if self.flat_field_rms <= 0:
            return np.ones(self.shape, dtype=np.float32)
        rng = np.random.default_rng(self.flat_field_seed)
        gain = 1.0 + rng.normal(0.0, self.flat_field_rms, self.shape)
        return np.clip(gain, 0.5, 1.5).astype(np.float32)

    @cached_property
    def detector_mask(self) -> NDArray[np.bool_]:
        """Module gaps and bad pixels of the detector itself (True = masked)."""
        mask = self.geometry.detector.mask  # type: ignore[attr-defined]
        if mask is None:
            return np.zeros(self.shape, dtype=bool)
        return np.asarray(mask, dtype=bool)

    def beamstop_shadow(self, offset_px: tuple[float, float] = (0.0, 0.0),
                        grow_px: float = 0.0) -> NDArray[np.bool_]:
        """Pixels shadowed by the beamstop disc and its arm (True = shadowed).

        ``grow_px`` enlarges the radius (a drawn mask leaves a margin around the shadow).
        """
        ny, nx = self.shape
        cx, cy = self.beam_center_px
        cx, cy = cx + offset_px[0], cy + offset_px[1]
        yy, xx = np.ogrid[0:ny, 0:nx]
        r = self.beamstop_radius_px + grow_px
        disc = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r**2
        arm = (np.abs(xx + 0.5 - cx) <= 0.4 * r) & (yy + 0.5 >= cy)
        return disc | arm

    @cached_property
    def mask(self) -> NDArray[np.bool_]:
        """The mask a beamline scientist draws: detector gaps plus the beamstop (grown 3 px)."""
        return self.detector_mask | self.beamstop_shadow(grow_px=3.0)

    @cached_property
    def q_edges_inv_angstrom(self) -> NDArray[np.float64]:
        """Edges of the fixed linear q bins."""
        q0, q1 = self.q_range_inv_angstrom
        return np.linspace(q0, q1, self.npt + 1)

    @cached_property
    def q_centers_inv_angstrom(self) -> NDArray[np.float64]:
        """Centres of the fixed q bins."""
        e = self.q_edges_inv_angstrom
        return 0.5 * (e[1:] + e[:-1])

    SUBBINS = 8
    """Sub-bins per q bin on which I(q) is evaluated for 1D simulation."""
    PIXEL_SAMPLES = 8
    """Points per pixel spread over its radial extent, as pyFAI's bbox splitting does."""

    def _fresh_geometry(self):
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator

        geo = self.geometry
        return AzimuthalIntegrator(dist=geo.dist, poni1=geo.poni1, poni2=geo.poni2,
                                   rot1=geo.rot1, rot2=geo.rot2, rot3=geo.rot3,
                                   detector=geo.detector, wavelength=geo.wavelength)

    @cached_property
    def bin_response(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """How intensity at fine q points reaches the output bins of an integrated frame.

        Returns ``(q_sub, response)``: ``response[j, b]`` is the summed acceptance
        (solid angle x polarisation x gain, sr) of unmasked pixels whose centre lies in
        sub-bin j, shared out over output bin b the way pyFAI's bbox splitting spreads a
        pixel over its radial extent. Expected counts in bin b are
        ``flux * t * T * sum_j I(q_j) response[j, b]``: the 1D simulator is then
        statistically equivalent to rendering a frame and integrating it with pyFAI.
        """
        q0, q1 = self.q_range_inv_angstrom
        width = (q1 - q0) / self.npt
        valid = ~self.mask
        q_c = self.q_map_inv_angstrom[valid]
        half = np.asarray(self._fresh_geometry().deltaQ(self.shape))[valid] / 10.0
        weights = (self.solid_angle_sr * self.polarization * self.flat_field)[valid]
        margin = float(half.max()) + width
        sub_width = width / self.SUBBINS
        sub0 = q0 - margin
        n_sub = int(np.ceil((q1 + margin - sub0) / sub_width))
        keep = (q_c + half >= q0) & (q_c - half < q1)
        q_c, half, weights = q_c[keep], half[keep], weights[keep]
        j = np.clip(((q_c - sub0) / sub_width).astype(np.int64), 0, n_sub - 1)
        response = np.zeros(n_sub * self.npt)
        k = self.PIXEL_SAMPLES
        for i in range(k):
            q = q_c + half * (2 * (i + 0.5) / k - 1)
            b = np.floor((q - q0) / width).astype(np.int64)
            ok = (b >= 0) & (b < self.npt)
            response += np.bincount(j[ok] * self.npt + b[ok], weights=weights[ok] / k,
                                    minlength=n_sub * self.npt)
        q_sub = sub0 + (np.arange(n_sub) + 0.5) * sub_width
        response = response.reshape(n_sub, self.npt)
        used = response.sum(1) > 0
        return q_sub[used], response[used]

    @cached_property
    def bin_acceptance_sr(self) -> NDArray[np.float64]:
        """Total acceptance (sr) of each output q bin."""
        return self.bin_response[1].sum(axis=0)

    @cached_property
    def empty_cell_response(self) -> NDArray[np.float64]:
        """The empty cell's scattering summed into each output bin (sr-weighted)."""
        q_sub, response = self.bin_response
        return empty_cell_per_sr(q_sub) @ response

    def write_poni(self, path) -> None:
        """Write the geometry as a PONI file (pyFAI's own writer)."""
        from pathlib import Path

        path = Path(path)
        if path.exists():
            path.unlink()  # pyFAI appends to an existing PONI file
        self.geometry.save(str(path))  # type: ignore[attr-defined]
