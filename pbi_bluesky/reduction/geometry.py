"""Detector geometry: loading PONI files, building synthetic geometries, provenance.

Also holds :func:`expected_frame`, a small renderer of noise-free SAXS frames used by the
tests, the benchmark and the simulator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyFAI
import pyFAI.detectors
from numpy.typing import NDArray
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

from .errors import ReductionError

__all__ = [
    "AzimuthalIntegrator",
    "expected_frame",
    "geometry_provenance",
    "load_geometry",
    "make_geometry",
]

logger = logging.getLogger(__name__)


def load_geometry(poni: str | Path | AzimuthalIntegrator) -> AzimuthalIntegrator:
    """Return an azimuthal integrator from a PONI file (or pass one through).

    Parameters
    ----------
    poni
        Path of a pyFAI PONI file, or an existing ``AzimuthalIntegrator``.

    Returns
    -------
    AzimuthalIntegrator
        Geometry whose detector has a known shape.

    Raises
    ------
    ReductionError
        If the file is missing, unreadable, or its detector has no shape.
    """
    if isinstance(poni, AzimuthalIntegrator):
        ai = poni
        source = "the given AzimuthalIntegrator"
    else:
        path = Path(poni)
        source = str(path)
        if not path.is_file():
            raise ReductionError(f"PONI file {path} not found")
        if path.stat().st_size == 0:
            raise ReductionError(f"PONI file {path} is empty")
        try:
            ai = pyFAI.load(str(path))
        except Exception as exc:  # pyFAI raises many types on bad content
            raise ReductionError(f"PONI file {path} could not be read: {exc}") from exc
        logger.debug("loaded geometry from %s", path)
    if ai.detector is None or ai.detector.shape is None:
        raise ReductionError(f"geometry from {source} has no detector shape")
    return ai


def _first_valid_pixel(mask: NDArray | None, row: int, col: int) -> tuple[int, int]:
    """Nearest pixel to (row, col) that is not masked (e.g. not in a module gap)."""
    if mask is None or not mask[row, col]:
        return row, col
    rows, cols = np.nonzero(~mask.astype(bool))
    k = int(np.argmin((rows - row) ** 2 + (cols - col) ** 2))
    return int(rows[k]), int(cols[k])


def make_geometry(
    detector_name: str = "Pilatus1M",
    distance_m: float = 3.0,
    wavelength_angstrom: float = 1.0,
    beam_center_px: tuple[int, int] | None = None,
) -> AzimuthalIntegrator:
    """Build a SAXS geometry with the beam hitting a detector pixel centre.

    Parameters
    ----------
    detector_name
        pyFAI detector name (``"Pilatus1M"``, ``"Pilatus300k"``, ``"Eiger4M"``, ...).
    distance_m
        Sample-detector distance in metres.
    wavelength_angstrom
        X-ray wavelength in angstrom.
    beam_center_px
        ``(row, column)`` of the pixel hit by the direct beam. Default: the pixel nearest
        the detector middle that is not masked by the detector (module gaps).

    Returns
    -------
    AzimuthalIntegrator
        Geometry with no detector tilt.
    """
    if distance_m <= 0:
        raise ReductionError(f"distance must be > 0, got {distance_m}")
    if wavelength_angstrom <= 0:
        raise ReductionError(f"wavelength must be > 0, got {wavelength_angstrom}")
    try:
        detector = pyFAI.detectors.detector_factory(detector_name)
    except Exception as exc:
        raise ReductionError(f"unknown detector {detector_name!r}: {exc}") from exc
    ny, nx = detector.shape
    if beam_center_px is None:
        row, col = _first_valid_pixel(detector.mask, ny // 2, nx // 2)
    else:
        row, col = (int(v) for v in beam_center_px)
        if not (0 <= row < ny and 0 <= col < nx):
            raise ReductionError(
                f"beam centre {beam_center_px} outside detector shape {detector.shape}"
            )
    pos1, pos2, _ = detector.calc_cartesian_positions(
        d1=np.array([[row]], dtype=np.float64), d2=np.array([[col]], dtype=np.float64)
    )
    ai = AzimuthalIntegrator(
        dist=distance_m,
        poni1=float(np.ravel(pos1)[0]),
        poni2=float(np.ravel(pos2)[0]),
        detector=detector,
        wavelength=wavelength_angstrom * 1e-10,
    )
    logger.debug("geometry %s at %.3f m, beam on pixel (%d, %d)", detector_name, distance_m,
                 row, col)
    return ai


def _plain(value: Any) -> Any:
    """JSON-friendly copy of a PONI config value (enums become ints, dicts recurse)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def geometry_provenance(ai: AzimuthalIntegrator) -> dict[str, Any]:
    """Return the PONI content of ``ai`` as a JSON-friendly dict, plus detector name and shape."""
    out: dict[str, Any] = _plain(ai.get_config())
    out["detector_name"] = ai.detector.name
    out["detector_shape"] = [int(s) for s in ai.detector.shape]
    return out


def expected_frame(
    ai: AzimuthalIntegrator,
    intensity_fn: Callable[[NDArray], NDArray],
    *,
    flux: float = 1.0,
    polarization_factor: float | None = 0.99,
    correct_solid_angle: bool = True,
    dark: NDArray | float = 0.0,
) -> NDArray[np.float64]:
    """Noise-free expected counts of a frame for a given I(q) (q in 1/angstrom).

    ``counts = flux * I(q) * solid_angle * polarization + dark``, with pyFAI's own
    (relative) solid-angle and polarization arrays, so that reducing the frame recovers
    ``flux * I(q) / monitor``.

    Parameters
    ----------
    ai
        The geometry: detector shape and the q of every pixel centre.
    intensity_fn
        I(q), called once with the array of pixel q values.
    flux
        Factor on I(q).
    polarization_factor
        As pyFAI defines it; ``None`` leaves polarization out.
    correct_solid_angle
        Multiply by pyFAI's relative solid angle of each pixel.
    dark
        Added to every pixel (a number or a frame).
    """
    shape = ai.detector.shape
    q = ai.array_from_unit(shape, "center", "q_A^-1", scale=True)
    frame = flux * np.asarray(intensity_fn(q), dtype=np.float64)
    if correct_solid_angle:
        frame = frame * ai.solidAngleArray(shape)
    if polarization_factor is not None:
        frame = frame * ai.polarization(shape, polarization_factor)
    return frame + dark


def absolute_monitor(i0_photons: float, ai: AzimuthalIntegrator) -> float:
    """Monitor value that makes the reduction absolute (photons per incident photon per sr).

    pyFAI's solid-angle correction is relative to a pixel at the PONI; multiplying the
    incident photon count by that pixel's absolute solid angle (pixel1*pixel2/dist^2)
    turns counts per relative solid angle into an absolute differential cross-section.
    """
    det = ai.detector
    return float(i0_photons * det.pixel1 * det.pixel2 / ai.dist**2)


def load_geometry_text(poni_text: str) -> AzimuthalIntegrator:
    """Build a geometry from PONI file *text* (as recorded in run metadata)."""
    import tempfile

    if not poni_text or "Distance" not in poni_text:
        raise ReductionError("PONI text is empty or has no Distance line")
    with tempfile.NamedTemporaryFile("w", suffix=".poni", delete=False) as fh:
        fh.write(poni_text)
        path = Path(fh.name)
    try:
        return load_geometry(path)
    finally:
        path.unlink(missing_ok=True)
