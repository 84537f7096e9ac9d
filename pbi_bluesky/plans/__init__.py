"""bluesky plans for SAXS measurements: tray surveys, rescans, fly scans."""

from pbi_bluesky.plans.adaptive import SampleOutcome, survey_and_rescan, wait_for_verdict
from pbi_bluesky.plans.fly import fly_slot
from pbi_bluesky.plans.tray import (
    TrayError,
    load_sample_list,
    measure_normals,
    measure_tray,
    rescan,
    resolve_slots,
    use_tray,
)

__all__ = [
    "SampleOutcome",
    "TrayError",
    "fly_slot",
    "load_sample_list",
    "measure_normals",
    "measure_tray",
    "rescan",
    "resolve_slots",
    "survey_and_rescan",
    "use_tray",
    "wait_for_verdict",
]
