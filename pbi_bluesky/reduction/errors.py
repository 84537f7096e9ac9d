"""Exception type shared by the reduction subpackage."""

from __future__ import annotations

__all__ = ["ReductionError"]


class ReductionError(ValueError):
    """Bad input to the 2D->1D reduction; the message names the problem."""
