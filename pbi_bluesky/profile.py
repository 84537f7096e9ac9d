"""The 1D SAXS profile: the one data type every layer of pbi_bluesky passes around.

A :class:`Profile` holds I(q) with its one-sigma uncertainty on a q grid in inverse
angstrom, and carries its provenance (how it was made) the way pyFAI result objects do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Profile", "ProfileError"]


class ProfileError(ValueError):
    """A profile's arrays are inconsistent or unusable; the message says which."""


@dataclass(frozen=True)
class Profile:
    """A reduced 1D scattering profile.

    Parameters
    ----------
    q_inv_angstrom
        Scattering-vector magnitude of each bin centre, in 1/angstrom, strictly increasing.
    intensity
        I(q) per bin. Absolute units (1/cm) when ``metadata["units"] == "1/cm"``; may be
        zero or negative for background-subtracted data.
    sigma
        One-standard-deviation uncertainty of ``intensity`` (same units), >= 0.
    metadata
        Free-form description (sample, composition, units, ...).
    provenance
        How the profile was made: geometry, corrections, method, software versions.
    """

    q_inv_angstrom: NDArray[np.float64]
    intensity: NDArray[np.float64]
    sigma: NDArray[np.float64]
    metadata: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        q = np.asarray(self.q_inv_angstrom, dtype=np.float64)
        i = np.asarray(self.intensity, dtype=np.float64)
        s = np.asarray(self.sigma, dtype=np.float64)
        if q.ndim != 1 or i.ndim != 1 or s.ndim != 1:
            raise ProfileError(
                f"q, intensity and sigma must be 1D; got shapes {q.shape}, {i.shape}, {s.shape}"
            )
        if not (q.size == i.size == s.size):
            raise ProfileError(
                f"q, intensity and sigma differ in length: {q.size}, {i.size}, {s.size}"
            )
        if q.size == 0:
            raise ProfileError("profile is empty (no q bins)")
        if not np.all(np.isfinite(q)):
            raise ProfileError("q contains NaN or infinite values")
        if q.size > 1 and not np.all(np.diff(q) > 0):
            raise ProfileError("q must be strictly increasing")
        if np.any(s[np.isfinite(s)] < 0):
            raise ProfileError("sigma must be non-negative")
        object.__setattr__(self, "q_inv_angstrom", q)
        object.__setattr__(self, "intensity", i)
        object.__setattr__(self, "sigma", s)

    @classmethod
    def from_arrays(
        cls,
        q_inv_angstrom: ArrayLike,
        intensity: ArrayLike,
        sigma: ArrayLike | None = None,
        **kwargs: Any,
    ) -> Profile:
        """Build a profile; a missing ``sigma`` becomes all zeros (unknown noise).

        Parameters
        ----------
        q_inv_angstrom, intensity, sigma
            Array-likes converted to float64 (see :class:`Profile`).
        **kwargs
            Further fields: ``metadata``, ``provenance``.

        Raises
        ------
        ProfileError
            If the arrays do not make a valid profile (shapes, q order, negative sigma).
        """
        i = np.asarray(intensity, dtype=np.float64)
        s = np.zeros_like(i) if sigma is None else np.asarray(sigma, dtype=np.float64)
        return cls(np.asarray(q_inv_angstrom, dtype=np.float64), i, s, **kwargs)

    @property
    def npt(self) -> int:
        """Number of q bins."""
        return int(self.q_inv_angstrom.size)

    @property
    def valid(self) -> NDArray[np.bool_]:
        """Bins with finite intensity and sigma (bins with no pixels are NaN)."""
        return np.isfinite(self.intensity) & np.isfinite(self.sigma)

    def with_metadata(self, **updates: Any) -> Profile:
        """Return a copy with ``metadata`` updated."""
        return Profile(
            self.q_inv_angstrom,
            self.intensity,
            self.sigma,
            {**self.metadata, **updates},
            dict(self.provenance),
        )
