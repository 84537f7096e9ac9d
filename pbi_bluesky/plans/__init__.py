"""bluesky plans for SAXS measurements."""

from pbi_bluesky.plans.tray import measure_tray

__all__ = ["measure_tray"]
