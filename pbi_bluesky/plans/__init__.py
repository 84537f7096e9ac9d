"""bluesky plans for SAXS measurements: tray surveys and adaptive rescans."""

from pbi_bluesky.plans.adaptive import SampleOutcome, survey_and_rescan, wait_for_verdict
from pbi_bluesky.plans.tray import measure_tray

__all__ = ["SampleOutcome", "measure_tray", "survey_and_rescan", "wait_for_verdict"]
