"""The live scorer: a bluesky callback that reduces and scores every frame off-thread.

``RE.subscribe(LiveScorer.from_settings(cfg))`` is all a user does (``cfg``: the beamline's
:class:`~pbi_bluesky.config.BeamlineConfig`, or the path of its ``beamline.yaml``). The
RunEngine thread only puts documents into a bounded :class:`~pbi_bluesky.live.inbox.Inbox`
(it never waits longer than ``put_timeout`` per document). One worker thread owns all
state: it follows the runs, joins each frame's parts (image, I0, transmission:
:mod:`~pbi_bluesky.scoring.streams`), and works in batches: it drains what is queued, reads
the batch (each HDF5 file opened once, neighbouring frames read together:
:mod:`~pbi_bluesky.scoring.reads`), reduces its frames with the run's pyFAI geometry in one
batch-integrator call, then scores them in one model pass
(:meth:`~pbi_bluesky.scoring.engine.FrameScorer.process`). A second thread computes the
Shapley attributions of flagged frames, which arrive later as their own events (stream
``pbi_attribution``), so they never delay the next verdict.

Every frame is accounted for: it ends up ``scored``, ``failed`` (with the reason: NaN frame,
wrong shape, missing geometry, transmission of 0, a path outside the data roots, an ambiguous
key, ...) or ``shed`` (queue full), and the analysis stop document counts them. Nothing
raised in here reaches the RunEngine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from event_model import DocumentRouter

from pbi_bluesky.config import BeamlineConfig, load_config
from pbi_bluesky.live.attributor import Attributor, Emitter, Sink
from pbi_bluesky.live.channel import VerdictChannel
from pbi_bluesky.live.inbox import FRAME_DOCS, Inbox
from pbi_bluesky.models import AnomalyDetector
from pbi_bluesky.profile import Profile
from pbi_bluesky.reduction import AbsoluteScale
from pbi_bluesky.scoring.analysis import AnalysisRun
from pbi_bluesky.scoring.engine import (
    ANALYSIS_STREAM,
    ATTRIBUTION_STREAM,
    FrameInput,
    FrameScorer,
    Outcome,
)
from pbi_bluesky.scoring.frames import AssetRegistry
from pbi_bluesky.scoring.result import FrameResult
from pbi_bluesky.scoring.streams import FrameJoiner, FrameParts

__all__ = ["ANALYSIS_STREAM", "ATTRIBUTION_STREAM", "LiveScorer"]

logger = logging.getLogger(__name__)


@dataclass
class _Run:
    uid: str
    start: dict[str, Any]
    assets: AssetRegistry
    joiners: dict[str, FrameJoiner] = field(default_factory=dict)
    resource_key: dict[str, str] = field(default_factory=dict)
    analysis: AnalysisRun | None = None
    core: FrameScorer | None = None
    """The scorer the run started with (a promoted model takes over at the next run)."""


@dataclass
class _Item:
    run: _Run
    parts: FrameParts
    joiner: FrameJoiner


class LiveScorer(DocumentRouter):
    """Score SAXS frames live; see the module docstring.

    Parameters
    ----------
    model
        A trained detector, a bundle path, or ``None`` for the shipped default model. A
        model that can never flag (infinite threshold) is refused with a
        :class:`~pbi_bluesky.models.BundleError` that says why.
    sinks
        Callables ``(name, doc)`` receiving the analysis-run documents (a
        :class:`~pbi_bluesky.store.SpoolSink` in front of Tiled, a ``LiveTable``...). They
        are called from the scorer's threads, one at a time; keep them fast.
    channel
        Where verdicts go for plans (one is made if omitted).
    image_key, monitor_key, transmission_key
        Data keys of the frame, I0 and transmission. ``None``: the single candidate of the
        descriptor (2D array; scalar ending in ``i0``/``monitor``; ending in
        ``transmission``); none or several candidates make every frame fail, naming them.
    poni
        Geometry (PONI file path or text) for every run; ``None``: the run's start document
        must carry it (``geometry``, PONI text, as the profile records from the
        configuration).
    mask, dark, flat
        Images (paths or arrays) used with every geometry.
    polarization_factor
        pyFAI polarisation factor (``None``: no correction).
    absolute_scale
        The instrument's absolute-intensity factor (an ``AbsoluteScale`` or the file
        ``pbi calibrate-absolute`` wrote); ``None``: factor 1, recorded as uncalibrated.
    background
        Empty-cell profile to subtract; runs with ``sample_type == "empty_cell"`` replace it.
    data_roots
        Folders frame files named by documents may be read from (anything else fails).
    transmission_required
        If false, a stream without a transmission reading is scored with T = 1.
    monitor_from_start
        Opt-in stop-gap: take I0/transmission from start-document keys ``i0`` and
        ``transmission`` when a stream has no such readings.
    queue_size, overflow, put_timeout
        Inbox bound for frame documents, ``"block"`` (wait up to ``put_timeout`` s, then
        shed) or ``"shed"`` (at once). Shed frames are counted and reported.
    batch_size
        Most frames scored in one pass.
    npt
        q bins of the reduction.
    """

    def __init__(
        self,
        model: AnomalyDetector | str | Path | None = None,
        *,
        sinks: Iterable[Sink] = (),
        channel: VerdictChannel | None = None,
        image_key: str | None = None,
        monitor_key: str | None = None,
        transmission_key: str | None = None,
        poni: str | Path | None = None,
        mask: Any = None,
        dark: Any = None,
        flat: Any = None,
        polarization_factor: float | None = 0.99,
        absolute_scale: AbsoluteScale | str | Path | None = None,
        background: Profile | None = None,
        data_roots: Iterable[str | Path] = (),
        transmission_required: bool = True,
        monitor_from_start: bool = False,
        queue_size: int = 64,
        overflow: str = "block",
        put_timeout: float = 0.5,
        batch_size: int = 16,
        npt: int = 400,
        attribution_backlog: int = 256,
        registry: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.core = FrameScorer(
            model, image_key=image_key, monitor_key=monitor_key,
            transmission_key=transmission_key, poni=poni, mask=mask, dark=dark, flat=flat,
            polarization_factor=polarization_factor, absolute_scale=absolute_scale,
            background=background, data_roots=data_roots,
            transmission_required=transmission_required,
            monitor_from_start=monitor_from_start, npt=npt, registry=registry)
        self.channel = channel or VerdictChannel()
        self.batch_size = max(1, int(batch_size))
        self._inbox = Inbox(queue_size, overflow=overflow, put_timeout=put_timeout)
        self._runs: dict[str, _Run] = {}
        self._descriptor_run: dict[str, str] = {}
        self._batch: list[_Item] = []
        self.emitter = Emitter(list(sinks))
        self.attributor = Attributor(self.model, self.emitter, self.channel,
                                     backlog=attribution_backlog)
        self._worker = threading.Thread(target=self._work, name="pbi-live-scorer", daemon=True)
        self._worker.start()

    @property
    def model(self) -> AnomalyDetector:
        """The detector that scores every frame."""
        return self.core.model

    @property
    def model_info(self) -> dict[str, Any]:
        """The serving model's identity (from the scoring core)."""
        return self.core.model_info

    @property
    def data_roots(self) -> tuple[str, ...]:
        """Folders frame files named by documents may be read from."""
        return self.core.data_roots

    @property
    def npt(self) -> int:
        """The number of q bins of the reduction (from the scoring core)."""
        return self.core.npt

    @property
    def background(self) -> Profile | None:
        """The running empty-cell background (replaced by each empty-cell frame)."""
        return self.core.background

    @background.setter
    def background(self, profile: Profile | None) -> None:
        self.core.background = profile

    @property
    def sinks(self) -> list[Sink]:
        """The analysis-document sinks (append to add one)."""
        return self.emitter.sinks

    @classmethod
    def from_settings(cls, settings: Any, *, mode: str | None = None,
                      **overrides: Any) -> LiveScorer:
        """Return a scorer configured from a beamline's settings.

        ``settings`` is a :class:`~pbi_bluesky.config.BeamlineConfig` or the path of a
        ``beamline.yaml``. The scorer gets what :meth:`FrameScorer.from_settings` takes
        (keys, geometry, mask, dark, flat, polarisation, data roots, model, q bins) plus
        the ``scorer`` section's queue and batch. ``mode`` (``"ophyd"`` or ``"async"``;
        default the settings' ``device_api``) selects the image key the devices of that mode
        produce; ``overrides`` win.
        """
        cfg = settings if isinstance(settings, BeamlineConfig) else load_config(settings)
        kwargs = FrameScorer.settings_kwargs(cfg, mode=mode)
        kwargs.update(queue_size=cfg.scorer.queue_size, overflow=cfg.scorer.overflow,
                      put_timeout=cfg.scorer.put_timeout_s, batch_size=cfg.scorer.batch_size)
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_config(cls, config: Any, *, mode: str | None = None,
                    **overrides: Any) -> LiveScorer:
        """Return the same as :meth:`from_settings` (its former name)."""
        return cls.from_settings(config, mode=mode, **overrides)

    # -- RunEngine thread: never raise, never wait longer than put_timeout --------------
    def __call__(self, name: str, doc: dict, validate: bool = False) -> None:
        """Queue a document for the worker thread; never raises into the RunEngine."""
        try:
            self._inbox.put(name, doc)
        except Exception:  # noqa: BLE001 - the scan must never die because of us
            logger.exception("pbi live scorer could not queue a %r document", name)

    @property
    def inbox(self) -> Inbox:
        """The bounded inbox (its counters say what was shed)."""
        return self._inbox

    # -- worker thread ----------------------------------------------------------------
    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every queued document is processed and every attribution is emitted.

        Return False on timeout.
        """
        deadline = time.monotonic() + timeout
        if not self._inbox.join(timeout):
            return False
        return self.attributor.join(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 60.0) -> bool:
        """Finish the queued work and stop both threads; False if they did not stop."""
        drained = self.flush(timeout)
        self._inbox.put_control("_close", {})
        self._worker.join(timeout)
        self.attributor.close(timeout)
        return drained and not self._worker.is_alive()

    def _work(self) -> None:
        while True:
            item = self._inbox.get(timeout=0.05)
            if item is None:
                self._flush_batch()
                continue
            name, doc = item
            try:
                if name == "_close":
                    self._flush_batch()
                    return
                if name not in FRAME_DOCS and name != "shed":
                    self._flush_batch()
                self._route(name, doc)
                if len(self._batch) >= self.batch_size or not self._inbox.peek_is_frame():
                    self._flush_batch()
            except Exception:  # noqa: BLE001 - keep scoring whatever happens
                logger.exception("pbi live scorer worker failed on a %s document", name)
            finally:
                self._inbox.task_done()

    def _route(self, name: str, doc: dict) -> None:
        if name == "shed":
            self._shed(doc)
        else:
            DocumentRouter.__call__(self, name, doc)

    # -- documents (worker thread) --------------------------------------------------------
    def start(self, doc):
        """Open a run (taking a newly promoted model, at this run boundary only)."""
        core = self.core.at_run_start()  # a newly promoted model, at a run boundary only
        if core is not self.core:
            self.core = core
            self.attributor.model = core.model
        self._runs[doc["uid"]] = _Run(doc["uid"], dict(doc), AssetRegistry(self.data_roots),
                                      core=core)

    def descriptor(self, doc):
        """Set up the frame joining of a stream of a known run."""
        run = self._runs.get(doc.get("run_start", ""))
        if run is None:
            return
        core = run.core or self.core
        roles = core.roles(doc)
        if roles is None:
            return
        self._descriptor_run[doc["uid"]] = run.uid
        run.joiners[doc["uid"]] = FrameJoiner(roles)
        if run.analysis is None:
            run.analysis = core.begin_analysis(run.start)
            self.emitter.emit_run_start(run.analysis)

    def resource(self, doc):
        """Register a resource with its run's assets (every open run's if unnamed)."""
        run = self._runs.get(doc.get("run_start", ""))
        for r in ([run] if run else self._runs.values()):
            r.assets.add_resource(doc)

    def datum(self, doc):
        """Register a datum with the runs that hold its resource."""
        for run in self._runs.values():
            if doc["resource"] in run.assets.resources:
                run.assets.add_datum(doc)

    def stream_resource(self, doc):
        """Register a stream resource and the data key it fills."""
        run = self._runs.get(doc.get("run_start", ""))
        for r in ([run] if run else self._runs.values()):
            r.assets.add_stream_resource(doc)
            r.resource_key[doc["uid"]] = doc.get("data_key", "")

    def _joiner(self, descriptor_uid: str) -> tuple[_Run, FrameJoiner] | None:
        run_uid = self._descriptor_run.get(descriptor_uid)
        if run_uid is None or run_uid not in self._runs:
            return None
        run = self._runs[run_uid]
        return run, run.joiners[descriptor_uid]

    def event(self, doc):
        """Join an event's data into its frame; queue the frame once complete."""
        found = self._joiner(doc["descriptor"])
        if found is None:
            return
        run, joiner = found
        data = {}
        for key, value in doc["data"].items():
            external = isinstance(value, str) and key in doc.get("filled", {})
            data[key] = ("datum", value) if external else ("inline", value)
        done = joiner.add_event(int(doc["seq_num"]), data)
        if done is not None:
            self._batch.append(_Item(run, done, joiner))

    def stream_datum(self, doc):
        """Join a stream datum's frames; queue each frame once complete."""
        found = self._joiner(doc["descriptor"])
        if found is None:
            return
        run, joiner = found
        key = run.resource_key.get(doc["stream_resource"])
        if key is None:
            logger.warning("stream datum for unknown stream resource %s", doc["stream_resource"])
            return
        seq0, idx0 = doc["seq_nums"]["start"], doc["indices"]["start"]
        for offset in range(doc["indices"]["stop"] - idx0):
            done = joiner.add(seq0 + offset, key, ("stream", (doc["stream_resource"],
                                                              idx0 + offset)))
            if done is not None:
                self._batch.append(_Item(run, done, joiner))

    def _shed(self, marker: dict) -> None:
        found = self._joiner(marker.get("descriptor") or "")
        if found is None:
            return
        _run, joiner = found
        for seq in marker.get("seq_nums", []):
            if seq is not None:
                joiner.mark_shed(int(seq))

    def stop(self, doc):
        """Close a run: record frames that never completed, then finish its analysis."""
        run = self._runs.pop(doc.get("run_start", ""), None)
        if run is None:
            self.channel.finish(doc.get("run_start", ""))
            return
        for uid in run.joiners:
            self._descriptor_run.pop(uid, None)
        for joiner in run.joiners.values():
            for parts in joiner.drain():
                missing = [k for k in joiner.roles.required if k not in parts.values]
                frame = FrameInput(run.uid, run.start, joiner.roles, parts, run.assets)
                if parts.shed:
                    result = FrameResult(run.uid, parts.seq_num, "shed",
                                         reason="work queue full: frame not scored")
                else:
                    result = FrameResult(
                        run.uid, parts.seq_num, "failed",
                        reason=f"incomplete frame: {', '.join(missing)} never arrived")
                self._record(run, Outcome(frame, result))
        received = sum(j.received for j in run.joiners.values())
        self.attributor.finish_run(run.uid, run.analysis, received, dict(doc),
                                   self._inbox.dropped_control)

    # -- frames (worker thread) -----------------------------------------------------------
    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        # frames of runs that started with different models go to their own scorer, in
        # order (a promotion never changes the model of a run in progress)
        i = 0
        while i < len(batch):
            core = batch[i].run.core or self.core
            j = i
            while j < len(batch) and (batch[j].run.core or self.core) is core:
                j += 1
            part = batch[i:j]
            frames = [FrameInput(item.run.uid, item.run.start, item.joiner.roles, item.parts,
                                 item.run.assets) for item in part]
            for item, outcome in zip(part, core.process(frames), strict=True):
                self._record(item.run, outcome)
            i = j

    def _record(self, run: _Run, outcome: Outcome) -> None:
        result = outcome.result
        if run.analysis is not None:
            self.emitter.emit("event", run.analysis.record(result, outcome.resampled))
        self.channel.put(result)
        if outcome.explain and outcome.resampled is not None:
            inten, sig = outcome.resampled
            self.attributor.submit(run.uid, run.analysis, result, inten, sig,
                                   result.expected_composition)
