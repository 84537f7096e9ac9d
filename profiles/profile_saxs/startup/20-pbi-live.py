"""Live anomaly detection: every frame reduced and scored as it arrives, results in Tiled.

Defines ``pbi`` (the LiveScorer, subscribed), ``runs`` (the Tiled catalog of runs),
``survey_and_rescan`` and ``flagged_runs``. Configure in beamline.yaml under ``pbi:``.
"""

from bluesky.callbacks import LiveTable
from bluesky.callbacks.buffer import BufferingWrapper
from bluesky_tiled_plugins import TiledWriter

from pbi_bluesky.live import ANALYSIS_STREAM, LiveScorer
from pbi_bluesky.plans import survey_and_rescan  # noqa: F401 - for the user
from pbi_bluesky.reduction import as_frame, load_geometry_text
from pbi_bluesky.simulate import Instrument
from pbi_bluesky.store import SpoolSink, data_dir, flagged_runs, open_runs  # noqa: F401

_pbi_cfg = BEAMLINE_CONFIG.get("pbi") or {}  # noqa: F821 - defined by 00-config.py
runs = open_runs(_pbi_cfg.get("tiled_uri"), api_key=_pbi_cfg.get("tiled_api_key"),
                 data_dir=_pbi_cfg.get("data_dir"))
_spool = data_dir(_pbi_cfg.get("data_dir")) / "spool"  # replay with `pbi replay-spool`
if _pbi_cfg.get("mask_file"):
    _mask = as_frame(_pbi_cfg["mask_file"]).astype(bool)
else:  # the simulated beamline's beamstop + module gaps, for the detector's own geometry
    _mask = Instrument(geometry=load_geometry_text(saxs.cam.poni.get())).mask  # noqa: F821
pbi = LiveScorer(
    _pbi_cfg.get("model"),  # None: the model shipped with pbi_bluesky
    sinks=[
        SpoolSink(_spool / "analysis", lambda: TiledWriter(runs)),
        LiveTable(["raw_seq_num", "status", "score", "p_value", "is_anomaly",
                   "top_attribution"], stream_name=ANALYSIS_STREAM),
    ],
    mask=_mask,
)
_raw_writer = BufferingWrapper(SpoolSink(_spool / "raw", lambda: TiledWriter(runs)))
RE.subscribe(_raw_writer)  # noqa: F821 - defined by 10-devices.py
RE.subscribe(pbi)  # noqa: F821

print("""Live anomaly scoring is on (pbi). Every frame is reduced and scored off the scan thread.
  Survey slots 1-3 after the empty cell (position 0), rescanning what gets flagged:
      RE(survey_and_rescan(saxs, changer, [1, 2, 3], 1.0, channel=pbi.channel,
                           reference_slots=[{"slot": 0, "sample_type": "empty_cell"}]))
  Flagged runs in Tiled:   flagged_runs(runs)""")
