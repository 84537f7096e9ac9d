"""The SAXS beamline session, built from beamline.yaml by pbi_bluesky.session.

The same file is the IPython startup (`pbi ipython`) and the queue server's startup code
(`start-re-manager --startup-dir profiles/profile_saxs/startup`, see pbi_bluesky.queue).
In the queue server's worker there is never a plot (no display), and the devices are in the
namespace under their names from beamline.yaml (what queued items name them by).

Environment: PBI_BEAMLINE_CONFIG selects the configuration (default: beamline.yaml next to
this folder), PBI_NO_PLOTS=1 turns the live plot off, PBI_DEVICE_API=async uses the
ophyd-async devices, PBI_DATA_DIR moves the data folder.
"""

import logging
import os
from pathlib import Path

import bluesky.plan_stubs as bps  # noqa: F401 - for the user
import bluesky.plans as bp  # noqa: F401 - for the user

from pbi_bluesky.plans import survey_and_rescan  # noqa: F401

# the plans with annotations the queue server reads (same code as pbi_bluesky.plans)
from pbi_bluesky.queue.plans import (  # noqa: F401
    fly_slot,
    measure_normals,
    measure_tray,
    rescan,
)
from pbi_bluesky.session import build_session
from pbi_bluesky.store import flagged_runs  # noqa: F401 - for the user

try:
    from bluesky_queueserver import is_re_worker_active
except ImportError:  # without pbi_bluesky[queue] this is never the queue server's worker

    def is_re_worker_active():
        return False


def _profile_dir() -> Path:
    if os.environ.get("PBI_PROFILE_DIR"):
        return Path(os.environ["PBI_PROFILE_DIR"])
    if "__file__" in globals():
        return Path(globals()["__file__"]).resolve().parents[1]
    return Path.cwd() / "profiles" / "profile_saxs"


_config = os.environ.get("PBI_BEAMLINE_CONFIG") or str(_profile_dir() / "beamline.yaml")
_plots = False if os.environ.get("PBI_NO_PLOTS") or is_re_worker_active() else None
_session = build_session(_config, mode=os.environ.get("PBI_DEVICE_API") or None,
                         data_root=os.environ.get("PBI_DATA_DIR") or None, plots=_plots)
logging.getLogger("pbi_bluesky").info("beamline configuration: %s", _session.config.public())

RE = _session.RE
beamline = _session.beamline
saxs, changer = beamline.detector, beamline.changer
monitors = beamline.monitors
globals().update(beamline.devices)  # by name: saxs, changer, i0, transmission
dets = beamline.readables  # the detector and its I0 / transmission monitors
pbi = _session.scorer
catalog = _session.catalog  # catalog.runs: the Tiled runs container (connects on first use)


def flush_session(timeout: float = 60.0) -> bool:
    """Wait until every frame is scored and every document is written (True if so); the
    queue server runs it as a function before its environment closes."""
    ok = pbi.flush(timeout)
    ok = _session.raw_spool.flush(timeout) and ok
    return _session.analysis_spool.flush(timeout) and ok

print(f"""SAXS beamline {_session.config.name!r} ({beamline.mode} devices) from {_config}
  detector {saxs.name}, changer {changer.name}, monitors {[m.name for m in monitors]}
  Measure slots 1-3, 1 s each, one run per sample (sample list: {_session.config.tray}):
      uids = RE(measure_tray(dets, changer, [1, 2, 3], 1.0, md={{"operator": "me"}}))
  Survey with rescans of what gets flagged (empty cell in slot 0):
      RE(survey_and_rescan(dets, changer, [1, 2, 3], 1.0, channel=pbi.channel,
                           reference_slots=[0]))
  Rescan one slot:            RE(rescan(dets, changer, 3, 2.0))
  Normals to train on (a run per recipe, after the empty cell):
      RE(measure_tray(dets, changer, [0], 1.0)); RE(measure_normals(dets, changer, [1, 2], 1.0))
  Flagged runs in Tiled:      flagged_runs(catalog.runs)
Live anomaly scoring is on (pbi): every frame is reduced and scored off the scan thread.""")
