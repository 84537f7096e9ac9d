"""The live scorer: a bluesky callback that reduces and scores every frame off-thread.

``RE.subscribe(LiveScorer.from_config(cfg))`` is all a user does. The RunEngine thread only
puts documents into a bounded :class:`~pbi_bluesky.live.inbox.Inbox` (it never waits longer
than ``put_timeout`` per document). One worker thread owns all state: it follows the runs,
joins each frame's parts (image, I0, transmission: :mod:`~pbi_bluesky.live.streams`), and
works in batches: it drains what is queued, reduces each frame with the run's pyFAI
geometry, then scores the whole batch in one model pass. A second thread computes the Shapley
attributions of flagged frames, which arrive later as their own events (stream
``pbi_attribution``), so they never delay the next verdict.

Every frame is accounted for: it ends up ``scored``, ``failed`` (with the reason: NaN frame,
wrong shape, missing geometry, transmission of 0, a path outside the data roots, an ambiguous
key, ...) or ``shed`` (queue full), and the analysis stop document counts them. Nothing
raised in here reaches the RunEngine.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from event_model import DocumentRouter

from pbi_bluesky.live.analysis import AnalysisRun, Attributor, Emitter
from pbi_bluesky.live.channel import FrameResult, VerdictChannel
from pbi_bluesky.live.frames import AssetRegistry, FrameError
from pbi_bluesky.live.inbox import FRAME_DOCS, Inbox
from pbi_bluesky.live.streams import FrameJoiner, FrameParts, resolve_roles
from pbi_bluesky.models import AnomalyDetector, ensure_can_flag, load_bundle
from pbi_bluesky.models.bundle import load_default_model
from pbi_bluesky.profile import Profile
from pbi_bluesky.reduction import (
    AbsoluteScale,
    Reducer,
    as_frame,
    load_absolute_scale,
    load_geometry_text,
)

__all__ = ["ANALYSIS_STREAM", "ATTRIBUTION_STREAM", "LiveScorer"]

logger = logging.getLogger(__name__)

ANALYSIS_STREAM = "pbi_anomaly"
ATTRIBUTION_STREAM = "pbi_attribution"
MAX_TRANSMISSION = 1.5
Sink = Callable[[str, dict], Any]


@dataclass
class _Run:
    uid: str
    start: dict[str, Any]
    assets: AssetRegistry
    joiners: dict[str, FrameJoiner] = field(default_factory=dict)
    resource_key: dict[str, str] = field(default_factory=dict)
    analysis: AnalysisRun | None = None


@dataclass
class _Item:
    run: _Run
    parts: FrameParts
    joiner: FrameJoiner


def _load_model(model: AnomalyDetector | str | Path | None) -> AnomalyDetector:
    """The model, refused (:class:`~pbi_bluesky.models.BundleError`) if it can never flag."""
    if isinstance(model, AnomalyDetector):
        return ensure_can_flag(model)
    return load_bundle(model) if model is not None else load_default_model()


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
    ) -> None:
        super().__init__()
        self.model = _load_model(model)
        self.model_info = dict(self.model.bundle_info)
        self.channel = channel or VerdictChannel()
        self.keys = {"image_key": image_key, "monitor_key": monitor_key,
                     "transmission_key": transmission_key}
        self.transmission_required = bool(transmission_required)
        self.monitor_from_start = bool(monitor_from_start)
        self.poni_text = self._poni_text(poni)
        self.mask = None if mask is None else as_frame(mask).astype(bool)
        self.dark = None if dark is None else as_frame(dark)
        self.flat = None if flat is None else as_frame(flat)
        self.polarization_factor = polarization_factor
        self.absolute_scale = (load_absolute_scale(absolute_scale)
                               if isinstance(absolute_scale, (str, Path)) else absolute_scale)
        self.npt = int(npt)
        self.background = background
        self.data_roots = tuple(str(Path(r)) for r in data_roots)
        self.batch_size = max(1, int(batch_size))
        self._inbox = Inbox(queue_size, overflow=overflow, put_timeout=put_timeout)
        self._runs: dict[str, _Run] = {}
        self._descriptor_run: dict[str, str] = {}
        self._reducers: dict[str, Reducer] = {}
        self._batch: list[_Item] = []
        self._warned_no_background = False
        self.emitter = Emitter(list(sinks))
        self.attributor = Attributor(self.model, self.emitter, self.channel,
                                     backlog=attribution_backlog)
        self._worker = threading.Thread(target=self._work, name="pbi-live-scorer", daemon=True)
        self._worker.start()

    @property
    def sinks(self) -> list[Sink]:
        """The analysis-document sinks (append to add one)."""
        return self.emitter.sinks

    @classmethod
    def from_config(cls, config: Any, *, mode: str = "ophyd", **overrides: Any) -> LiveScorer:
        """A scorer configured from a :class:`~pbi_bluesky.config.BeamlineConfig` (or the
        path of a ``beamline.yaml``): keys, geometry, mask, dark, flat, polarisation, data
        roots, model, queue settings. ``mode`` (``"ophyd"`` or ``"async"``) selects the
        image key the devices of that mode produce; ``overrides`` win."""
        from pbi_bluesky.config import BeamlineConfig, load_config

        cfg = config if isinstance(config, BeamlineConfig) else load_config(config)
        name = cfg.detector.name
        g = cfg.geometry
        kwargs: dict[str, Any] = {
            "model": cfg.scorer.model,
            "image_key": f"{name}_image" if mode == "ophyd" else name,
            "monitor_key": cfg.monitors.i0_name,
            "transmission_key": cfg.monitors.transmission_name
            if cfg.monitors.transmission else None,
            "transmission_required": bool(cfg.monitors.transmission),
            "poni": g.poni, "mask": g.mask, "dark": g.dark, "flat": g.flat,
            "polarization_factor": g.polarization_factor,
            "absolute_scale": g.absolute_scale,
            "data_roots": cfg.data_roots, "queue_size": cfg.scorer.queue_size,
            "overflow": cfg.scorer.overflow, "put_timeout": cfg.scorer.put_timeout_s,
            "npt": cfg.scorer.npt,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    @staticmethod
    def _poni_text(poni: str | Path | None) -> str | None:
        if poni is None:
            return None
        text = str(poni)
        if "Distance" in text and "\n" in text:
            return text
        return Path(poni).read_text()

    # -- RunEngine thread: never raise, never wait longer than put_timeout --------------
    def __call__(self, name: str, doc: dict, validate: bool = False) -> None:
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
        """Wait until every queued document is processed and every attribution is
        emitted; False on timeout."""
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
        self._runs[doc["uid"]] = _Run(doc["uid"], dict(doc), AssetRegistry(self.data_roots))

    def descriptor(self, doc):
        run = self._runs.get(doc.get("run_start", ""))
        if run is None:
            return
        roles = resolve_roles(doc, transmission_required=self.transmission_required
                              and not self.monitor_from_start,
                              monitor_required=not self.monitor_from_start, **self.keys)
        if roles is None:
            return
        self._descriptor_run[doc["uid"]] = run.uid
        run.joiners[doc["uid"]] = FrameJoiner(roles)
        if run.analysis is None:
            run.analysis = AnalysisRun.begin(run.start, self.model, self.model_info,
                                             self._reduction_provenance(run.start),
                                             ANALYSIS_STREAM, ATTRIBUTION_STREAM)
            self.emitter.emit_run_start(run.analysis)

    def resource(self, doc):
        run = self._runs.get(doc.get("run_start", ""))
        for r in ([run] if run else self._runs.values()):
            r.assets.add_resource(doc)

    def datum(self, doc):
        for run in self._runs.values():
            if doc["resource"] in run.assets.resources:
                run.assets.add_datum(doc)

    def stream_resource(self, doc):
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
        run = self._runs.pop(doc.get("run_start", ""), None)
        if run is None:
            self.channel.finish(doc.get("run_start", ""))
            return
        for uid in run.joiners:
            self._descriptor_run.pop(uid, None)
        for joiner in run.joiners.values():
            for parts in joiner.drain():
                missing = [k for k in joiner.roles.required if k not in parts.values]
                if parts.shed:
                    self._record(run, FrameResult(run.uid, parts.seq_num, "shed",
                                                  reason="work queue full: frame not "
                                                         "scored"), None)
                else:
                    self._record(run, FrameResult(
                        run.uid, parts.seq_num, "failed",
                        reason=f"incomplete frame: {', '.join(missing)} never arrived"), None)
        received = sum(j.received for j in run.joiners.values())
        self.attributor.finish_run(run.uid, run.analysis, received, dict(doc),
                                   self._inbox.dropped_control)

    # -- frames (worker thread) -----------------------------------------------------------
    def _reduction_provenance(self, start: dict[str, Any]) -> dict[str, Any]:
        poni = self.poni_text or start.get("geometry")
        info: dict[str, Any] = {"geometry_source": "configured" if self.poni_text else
                                "start document" if poni else "missing",
                                "npt": self.npt, "polarization_factor": self.polarization_factor,
                                "mask": self.mask is not None, "dark": self.dark is not None,
                                "flat": self.flat is not None}
        if poni:
            try:
                info.update(self._reducer(poni).provenance())
            except Exception as exc:  # noqa: BLE001 - frames will fail with the reason
                info["geometry_error"] = str(exc)
        return info

    def _reducer(self, poni_text: str) -> Reducer:
        import hashlib

        key = hashlib.sha256(poni_text.encode()).hexdigest()
        reducer = self._reducers.get(key)
        if reducer is None:
            reducer = Reducer(load_geometry_text(poni_text), npt=self.npt, mask=self.mask,
                              dark=self.dark, flat=self.flat,
                              polarization_factor=self.polarization_factor,
                              absolute_scale=self.absolute_scale)
            self._reducers[key] = reducer
        return reducer

    def _value(self, run: _Run, value: Any, what: str) -> Any:
        kind, payload = value
        if kind == "inline":
            return payload
        if kind == "datum":
            return run.assets.frame_from_datum(payload)
        return run.assets.value_from_stream(*payload)

    def _reading(self, run: _Run, parts: FrameParts, key: str | None, what: str,
                 start_key: str) -> float | None:
        if key is None:
            if self.monitor_from_start and run.start.get(start_key) is not None:
                return float(run.start[start_key])
            return None
        raw = np.asarray(self._value(run, parts.values[key], what), dtype=float)
        if raw.size != 1:
            raise FrameError(f"{what} reading {key!r} has {raw.size} values, expected 1")
        return float(raw.reshape(-1)[0])

    def _prepare(self, item: _Item) -> tuple[FrameResult, Profile | None, bool]:
        """Read and reduce one frame: (result so far, profile, is empty cell)."""
        run, parts, roles = item.run, item.parts, item.joiner.roles
        start = run.start
        result = FrameResult(run.uid, parts.seq_num, "failed",
                             expected_composition=str(start.get("composition") or ""),
                             metadata={"sample": start.get("sample"), "slot": start.get("slot")})
        if roles.problem:
            raise FrameError(roles.problem)
        monitor = self._reading(run, parts, roles.monitor, "I0", "i0")
        if monitor is None:
            raise FrameError("no incident-flux (I0) reading for this frame")
        if not (math.isfinite(monitor) and monitor > 0):
            raise FrameError(f"I0 reading {monitor!r} is not a positive number")
        transmission = self._reading(run, parts, roles.transmission, "transmission",
                                     "transmission")
        if transmission is None:
            if self.transmission_required:
                raise FrameError("no transmission reading for this frame")
            transmission = 1.0
        if not (math.isfinite(transmission) and 0 < transmission <= MAX_TRANSMISSION):
            raise FrameError(f"transmission {transmission!r} is not in (0, {MAX_TRANSMISSION}]")
        poni = self.poni_text or start.get("geometry")
        if not poni:
            raise FrameError("no geometry: configure poni= (beamline.yaml geometry.poni) or "
                             "record PONI text as 'geometry' in the start document")
        reducer = self._reducer(poni)
        frame = np.asarray(self._value(run, parts.values[roles.image], "image"))
        if frame.ndim == 1 and roles.shape and len(roles.shape) >= 2:
            frame = frame.reshape(roles.shape[-2:])
        if frame.ndim == 3 and frame.shape[0] == 1:
            frame = frame[0]
        if frame.size == 0:
            raise FrameError("frame is empty")
        is_cell = start.get("sample_type") == "empty_cell"
        thickness = start.get("thickness_cm")
        if not is_cell:
            expected = start.get("composition")
            if expected is not None and expected not in self.model.recipes:
                raise FrameError(f"expected recipe {expected!r} unknown to the model "
                                 f"({self.model.recipes})")
            if thickness is None:
                raise FrameError("no sample thickness ('thickness_cm') in the start "
                                 "document: absolute intensity unknown")
        profile = reducer.reduce_absolute(
            frame, i0=monitor, transmission=transmission,
            thickness_cm=None if is_cell else float(thickness),
            background=None if is_cell else self.background)
        return result, profile, is_cell

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        to_score: list[tuple[_Item, FrameResult, Profile, np.ndarray, np.ndarray]] = []
        for item in batch:
            profile = None
            try:
                result, profile, is_cell = self._prepare(item)
                if is_cell:
                    self.background = profile
                    result.status, result.reason = "reference", "empty cell: background updated"
                    self._record(item.run, result, profile)
                    continue
                if self.background is None and not self._warned_no_background:
                    self._warned_no_background = True
                    logger.warning("no empty-cell background yet (measure a run with "
                                   "sample_type='empty_cell' or pass background=): profiles "
                                   "include the cell's scattering")
                intensity, sigma = self.model.resample([profile])
                to_score.append((item, result, profile, intensity[0], sigma[0]))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a record
                self._fail(item, exc, profile)
        if to_score:
            self._score(to_score)

    def _fail(self, item: _Item, exc: Exception, profile: Profile | None) -> None:
        start = item.run.start
        reason = f"{type(exc).__name__}: {exc}"
        logger.info("frame %d of run %s failed: %s", item.parts.seq_num, item.run.uid[:8],
                    reason)
        self._record(item.run, FrameResult(
            item.run.uid, item.parts.seq_num, "failed", reason=reason,
            expected_composition=str(start.get("composition") or ""),
            metadata={"sample": start.get("sample"), "slot": start.get("slot")}), profile)

    def _score(self, rows: list) -> None:
        intensity = np.stack([r[3] for r in rows])
        sigma = np.stack([r[4] for r in rows])
        expected = [r[0].run.start.get("composition") for r in rows]
        try:
            verdicts = self.model.score_arrays(intensity, sigma, expected, explain="none")
        except Exception as exc:  # noqa: BLE001 - fail the batch, frame by frame
            for item, _res, profile, _i, _s in rows:
                self._fail(item, exc, profile)
            return
        for (item, base, profile, inten, sig), verdict in zip(rows, verdicts, strict=True):
            result = FrameResult(
                item.run.uid, item.parts.seq_num, "scored", score=verdict.score,
                threshold=verdict.threshold, is_anomaly=verdict.is_anomaly, p_value=verdict.p_value,
                hyperscore=verdict.hyperscore,
                predicted_composition=verdict.predicted_composition,
                expected_composition=verdict.expected_composition, metadata=base.metadata)
            self._record(item.run, result, profile, (inten, sig))
            if verdict.is_anomaly:
                logger.warning(
                    "ANOMALY run %s frame %d sample %s: score %.3g p %.3g (expected %s, looks "
                    "like %s)", item.run.uid[:8], item.parts.seq_num,
                    item.run.start.get("sample"), verdict.score, verdict.p_value,
                    verdict.expected_composition, verdict.predicted_composition)
                self.attributor.submit(item.run.uid, item.run.analysis, result, inten, sig,
                                       verdict.expected_composition)

    def _record(self, run: _Run, result: FrameResult, profile: Profile | None,
                resampled: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        if resampled is None and profile is not None:
            try:
                inten, sig = self.model.resample([profile])
                resampled = (inten[0], sig[0])
            except Exception:  # noqa: BLE001 - the curve does not cover the grid
                resampled = None
        if run.analysis is not None:
            event = run.analysis.record(result, resampled)
            self.emitter.emit("event", event)
        self.channel.put(result)
