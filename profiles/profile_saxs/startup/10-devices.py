"""RunEngine, beamline devices and live feedback for the SAXS beamline.

Defines ``RE``, ``bec``, ``beamline``, ``saxs`` (detector), ``changer``, ``beam``, and the
plans ``measure_tray`` plus ``bps``/``bp`` shortcuts. Needs ``BEAMLINE_CONFIG`` from
00-config.py.
"""

import bluesky.plan_stubs as bps  # noqa: F401 - for the user
import bluesky.plans as bp  # noqa: F401 - for the user
from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback

from pbi_bluesky.devices import connect_beamline
from pbi_bluesky.plans import measure_tray  # noqa: F401 - for the user

RE = RunEngine({})
bec = BestEffortCallback()
if not BEAMLINE_CONFIG["plots"]:  # noqa: F821 - defined by 00-config.py
    bec.disable_plots()
RE.subscribe(bec)

beamline = connect_beamline(
    BEAMLINE_CONFIG["prefix"],  # noqa: F821
    timeout=float(BEAMLINE_CONFIG["connection_timeout_s"]),  # noqa: F821
    timeout_margin=float(BEAMLINE_CONFIG["detector_timeout_margin_s"]),  # noqa: F821
)
saxs, changer, beam = beamline.detector, beamline.changer, beamline.beam

print(f"""SAXS beamline {beamline.prefix} connected: saxs (detector), changer, beam.
  Measure slots 1-3, 1 s each, one run per sample:
      uids = RE(measure_tray(saxs, changer, [1, 2, 3], 1.0, md={{"operator": "me"}}))
  Move the changer:        RE(bps.mv(changer, 4))
  What is in a slot:       changer.slot_info(4).read()
  One frame:               RE(bp.count([saxs]))""")
