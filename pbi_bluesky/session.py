"""A beamline session built from ``beamline.yaml``: what the startup files define.

The IPython profile (``pbi ipython``), the queue server's worker (``start-re-manager
--startup-dir profiles/profile_saxs/startup``), the demo and the tests all call
:func:`build_session`, so they run the same code:

* a ``RunEngine`` whose metadata (``scan_id`` included) persists across sessions
  (``bluesky.utils.PersistentDict`` in the data folder) and carries the beamline's geometry
  (PONI text from the configured file), mask file and name in every start document;
* the devices (stock ophyd or ophyd-async, ``device_api``), after the file's ``epics``
  section set the Channel Access client environment (variables already set win);
* the session tray (:func:`~pbi_bluesky.plans.use_tray`);
* a lazily connected Tiled catalog behind two crash-safe spools (raw and analysis runs):
  a session that starts while Tiled is down still works and writes later;
* the :class:`~pbi_bluesky.live.LiveScorer`, subscribed, with a ``LiveTable``, (with
  plots on) a live score / I(q) plot and (with ``feed.url`` set) the verdict feed
  (:class:`~pbi_bluesky.live.VerdictFeed`: each analysis run's verdict on a Redis stream
  for ``pbi queue agent``; it publishes on its own thread and never blocks scoring).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbi_bluesky.config import BeamlineConfig, load_config
from pbi_bluesky.devices import Beamline, make_beamline
from pbi_bluesky.live import ANALYSIS_STREAM, LiveScorer, VerdictFeed
from pbi_bluesky.plans import use_tray
from pbi_bluesky.store import Catalog, SpoolSink, data_dir

__all__ = ["Session", "beamline_metadata", "build_session"]

logger = logging.getLogger(__name__)


@dataclass
class Session:
    """Everything a beamline session holds (see the module docstring)."""

    config: BeamlineConfig
    RE: Any
    beamline: Beamline
    scorer: LiveScorer
    catalog: Catalog
    raw_spool: SpoolSink
    analysis_spool: SpoolSink
    data_dir: Path
    extras: dict[str, Any] = field(default_factory=dict)

    def close(self, timeout: float = 60.0) -> bool:
        """Finish scoring and writing (True if nothing is left pending)."""
        self.scorer.flush(timeout)
        self.scorer.close(timeout)
        feed = self.extras.get("feed")
        if feed is not None:
            feed.close(min(timeout, 10.0))  # best effort: Tiled holds every verdict anyway
        ok_raw = self.raw_spool.close(timeout)
        ok_analysis = self.analysis_spool.close(timeout)
        return ok_raw and ok_analysis


def _sha256(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def beamline_metadata(cfg: BeamlineConfig) -> dict[str, Any]:
    """Return the start-document metadata every run of this beamline carries.

    That is the geometry (PONI text) and the files it came from, with their sha256.
    """
    g = cfg.geometry
    return {
        "beamline": cfg.name,
        "geometry": g.poni_text(),
        "geometry_format": "pyFAI PONI",
        "geometry_file": g.poni,
        "geometry_sha256": _sha256(g.poni),
        "mask_file": g.mask,
        "mask_sha256": _sha256(g.mask),
        "polarization_factor": g.polarization_factor,
        "absolute_scale": _scale(g.absolute_scale),
        "beamline_config": cfg.source,
    }


def _scale(path: str | None) -> dict[str, Any] | None:
    """Return the absolute-scale record (``pbi calibrate-absolute``) for the start documents."""
    if not path:
        return None
    from pbi_bluesky.reduction import load_absolute_scale

    return load_absolute_scale(path).to_dict()


def build_session(
    config: BeamlineConfig | str | Path | None = None,
    *,
    mode: str | None = None,
    data_root: str | Path | None = None,
    plots: bool | None = None,
    live_table: bool = True,
    persistent_md: bool = True,
    scorer_kwargs: dict[str, Any] | None = None,
) -> Session:
    """Build a session from a configuration (file, object, or ``$PBI_BEAMLINE_CONFIG``).

    Parameters
    ----------
    config
        The beamline configuration.
    mode
        ``"ophyd"`` or ``"async"`` (default: the configuration's ``device_api``).
    data_root
        Local data folder (default: the configuration's ``data_dir``, ``$PBI_DATA_DIR``,
        ``~/.local/share/pbi_bluesky``): catalog, spools, RunEngine metadata.
    plots
        Live score / I(q) plot (default: the configuration's ``plots``).
    live_table
        Print a table of verdicts as frames are scored.
    persistent_md
        Keep ``RE.md`` (``scan_id``...) across sessions in the data folder.
    scorer_kwargs
        Overrides for :meth:`LiveScorer.from_settings`.
    """
    from bluesky import RunEngine
    from bluesky.utils import PersistentDict

    cfg = config if isinstance(config, BeamlineConfig) else load_config(config)
    mode = mode or cfg.device_api
    root = data_dir(data_root or cfg.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    md: Any = PersistentDict(str(root / "runengine-metadata")) if persistent_md else {}
    RE = RunEngine(md)
    RE.md.update(beamline_metadata(cfg))
    applied = cfg.epics.apply()
    if applied:
        logger.info("Channel Access environment from %s: %s", cfg.source,
                    " ".join(f"{k}={v}" for k, v in applied.items()))
    beamline = make_beamline(cfg, mode)
    if cfg.tray:
        use_tray(cfg.tray)
    budget = cfg.tiled.memory_mib << 20  # bytes held in memory by each spool and writer
    catalog = Catalog(cfg.tiled.uri, api_key=cfg.tiled.api_key, data_dir=root / "catalog",
                      readable=cfg.data_roots, writer_cache_bytes=budget)
    raw_spool = SpoolSink(root / "spool" / "raw", catalog.writer,
                          delete_partial=catalog.delete_partial, max_bytes=budget)
    # analysis documents are composed here in the current schema: no normalizer (~10 ms of
    # CPU per event saved on the spool's thread, issue 22)
    analysis_spool = SpoolSink(root / "spool" / "analysis",
                               functools.partial(catalog.writer, composed=True),
                               delete_partial=catalog.delete_partial, max_bytes=budget)
    sinks: list[Any] = [analysis_spool]
    extras: dict[str, Any] = {}
    feed = VerdictFeed.from_settings(cfg)
    if feed is not None:
        sinks.append(feed)
        extras["feed"] = feed
        logger.info("verdict feed: publishing to stream %s at %s", cfg.feed.stream,
                    cfg.feed.url)
    if live_table:
        from bluesky.callbacks import LiveTable

        table = LiveTable(["raw_seq_num", "status", "score", "p_value", "is_anomaly",
                           "predicted_composition"], stream_name=ANALYSIS_STREAM)
        # analysis runs have no plan_type/scan_id: name the raw run they analyse instead
        table.water_mark = "pbi analysis ['{st[uid]:.8s}'] of raw run ['{st[raw_uid]:.8s}']"
        sinks.append(table)
        extras["table"] = table
    if cfg.plots if plots is None else plots:
        from pbi_bluesky.live.plot import ScorePlot

        extras["plot"] = ScorePlot()
        sinks.append(extras["plot"])
    scorer = LiveScorer.from_settings(cfg, mode=mode, sinks=sinks, **(scorer_kwargs or {}))
    RE.subscribe(raw_spool)
    RE.subscribe(scorer)
    logger.info("session for beamline %s (%s devices) from %s; data in %s", cfg.name, mode,
                cfg.source, root)
    return Session(cfg, RE, beamline, scorer, catalog, raw_spool, analysis_spool, root,
                   extras)
