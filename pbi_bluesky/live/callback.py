"""The live scorer: a bluesky callback that reduces and scores every frame off-thread.

``RE.subscribe(LiveScorer(...))`` is all a user does. On the RunEngine thread the
callback only reads documents and queues work (bounded queue); a worker thread reduces
each frame with pyFAI geometry from the run's metadata, scores it with the model, and
writes one *analysis run* per raw run (``event_model.compose_run``) to its sinks
(TiledWriter, a spool, a LiveTable...). Nothing raised in here reaches the RunEngine.

Every frame is accounted for: it ends up ``scored``, ``failed`` (with the reason: NaN
frame, wrong shape, missing geometry, unreadable file, ...) or ``shed`` (queue full, if
``overflow="shed"``), and the analysis stop document counts them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from event_model import DocumentRouter, compose_run

from pbi_bluesky.live.channel import FrameResult, VerdictChannel
from pbi_bluesky.live.frames import AssetRegistry, FrameError, image_keys
from pbi_bluesky.models import AnomalyDetector, load_bundle
from pbi_bluesky.models.bundle import load_default_model
from pbi_bluesky.profile import Profile
from pbi_bluesky.reduction import Reducer, absolute_monitor, load_geometry_text

__all__ = ["LiveScorer", "ANALYSIS_STREAM"]

logger = logging.getLogger(__name__)

ANALYSIS_STREAM = "pbi_anomaly"
Sink = Callable[[str, dict], Any]


@dataclass
class _Run:
    uid: str
    start: dict[str, Any]
    descriptors: dict[str, dict[str, Any]] = field(default_factory=dict)
    assets: AssetRegistry = field(default_factory=AssetRegistry)
    received: int = 0
    shed: int = 0
    analysis_requested: bool = False


@dataclass
class _Analysis:
    bundle: Any
    descriptor: Any
    counts: dict[str, int] = field(default_factory=lambda: {"scored": 0, "failed": 0,
                                                            "shed": 0, "flagged": 0})
    max_score: float = float("-inf")
    seq: int = 0
    reasons: list[str] = field(default_factory=list)


class LiveScorer(DocumentRouter):
    """Score SAXS frames live; see the module docstring.

    Parameters
    ----------
    model
        A trained :class:`~pbi_bluesky.models.AnomalyDetector`, a bundle path, or
        ``None`` for the shipped default model.
    sinks
        Callables ``(name, doc)`` that receive the analysis-run documents (for example a
        ``TiledWriter`` or a :class:`~pbi_bluesky.store.SpoolSink`).
    channel
        Where verdicts go for plans (a :class:`VerdictChannel`; one is made if omitted).
    mask, dark
        Optional images used for every geometry (paths or arrays), e.g. the beamstop mask.
    background
        Empty-cell profile to subtract; runs whose start document has
        ``sample_type == "empty_cell"`` replace it as they are measured.
    queue_size, overflow
        Bound of the work queue; ``"block"`` (wait up to ``put_timeout`` s, then shed) or
        ``"shed"`` (drop at once when full). Shed frames are counted and reported.
    """

    def __init__(
        self,
        model: AnomalyDetector | str | Path | None = None,
        *,
        sinks: Iterable[Sink] = (),
        channel: VerdictChannel | None = None,
        mask: Any = None,
        dark: Any = None,
        background: Profile | None = None,
        queue_size: int = 64,
        overflow: str = "block",
        put_timeout: float = 2.0,
        npt: int = 400,
    ) -> None:
        super().__init__()
        if overflow not in ("block", "shed"):
            raise ValueError("overflow must be 'block' or 'shed'")
        if isinstance(model, AnomalyDetector):
            self.model = model
        else:
            self.model = load_bundle(model) if model is not None else load_default_model()
        self.model_info = dict(self.model.bundle_info)
        self.sinks = list(sinks)
        self.channel = channel or VerdictChannel()
        self.mask, self.dark, self.npt = mask, dark, npt
        self.background = background
        self.overflow, self.put_timeout = overflow, put_timeout
        self._runs: dict[str, _Run] = {}
        self._descriptor_run: dict[str, str] = {}
        self._reducers: dict[str, Reducer] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._analyses: dict[str, _Analysis] = {}
        self._warned_no_background = False
        self._worker = threading.Thread(target=self._work, name="pbi-live-scorer", daemon=True)
        self._worker.start()

    # -- RunEngine thread: never raise, never block for long ----------------------------
    def __call__(self, name: str, doc: dict, validate: bool = False) -> Any:
        try:
            return super().__call__(name, doc, validate)
        except Exception:  # noqa: BLE001 - the scan must never die because of us
            logger.exception("pbi live scorer ignored a failure on a %r document", name)
            return None

    def start(self, doc):
        self._runs[doc["uid"]] = _Run(doc["uid"], dict(doc))

    def descriptor(self, doc):
        run = self._runs.get(doc["run_start"])
        if run is None:
            return
        self._descriptor_run[doc["uid"]] = run.uid
        keys = image_keys(doc)
        data_keys = doc.get("data_keys", {})
        config_poni = None
        for obj in doc.get("configuration", {}).values():
            for key, value in obj.get("data", {}).items():
                if key.lower().endswith("poni") and isinstance(value, str):
                    config_poni = value
        if keys and not run.analysis_requested:
            run.analysis_requested = True  # an analysis run only for runs with images
            self._submit(("start", run.uid))
        run.descriptors[doc["uid"]] = {
            "name": doc.get("name"),
            "image": keys[0] if keys else None,
            "monitor": next((k for k in data_keys if k.lower().endswith(("i0", "monitor"))),
                            None),
            "transmission": next((k for k in data_keys
                                  if k.lower().endswith("transmission")), None),
            "poni": config_poni,
            "shape": data_keys[keys[0]]["shape"] if keys else None,
        }

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

    def _stream_of(self, descriptor_uid: str) -> tuple[_Run, dict[str, Any]] | None:
        """The run and image-stream info a descriptor belongs to (None if unknown)."""
        run_uid = self._descriptor_run.get(descriptor_uid)
        if run_uid is None:
            return None
        run = self._runs[run_uid]
        return run, run.descriptors[descriptor_uid]

    def event(self, doc):
        found = self._stream_of(doc["descriptor"])
        if found is None or found[1]["image"] is None:
            return
        run, info = found
        run_uid = run.uid
        run.received += 1
        value = doc["data"].get(info["image"])
        source = ("inline", value) if not isinstance(value, str) else ("datum", value)
        self._submit(("frame", run_uid, int(doc["seq_num"]), source,
                      doc["data"].get(info["monitor"]) if info["monitor"] else None,
                      doc["data"].get(info["transmission"]) if info["transmission"] else None,
                      info))

    def stream_datum(self, doc):
        found = self._stream_of(doc["descriptor"])
        if found is None:
            return
        run, info = found
        run_uid = run.uid
        seq0 = doc["seq_nums"]["start"]
        # frames written by a flyer (ophyd-async) come without I0/transmission readings in
        # the same document: the run's start document may give them ('i0', 'transmission')
        monitor, transmission = run.start.get("i0"), run.start.get("transmission")
        for offset, index in enumerate(range(doc["indices"]["start"], doc["indices"]["stop"])):
            run.received += 1
            self._submit(("frame", run_uid, seq0 + offset,
                          ("stream", (doc["stream_resource"], index)), monitor, transmission,
                          info))

    def stop(self, doc):
        run = self._runs.get(doc["run_start"])
        if run is None:
            return
        self._submit(("stop", run.uid, dict(doc)))

    def _submit(self, task: tuple) -> None:
        if task[0] != "frame":
            self._queue.put(task)  # control messages always get through
            return
        try:
            if self.overflow == "shed":
                self._queue.put_nowait(task)
            else:
                self._queue.put(task, timeout=self.put_timeout)
        except queue.Full:
            run = self._runs[task[1]]
            run.shed += 1
            logger.warning("pbi live scorer shed frame %s of run %s: queue full", task[2],
                           task[1][:8])
            self._queue.put(("shed", task[1], task[2]))

    # -- worker thread ------------------------------------------------------------------
    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every queued task is processed; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 60.0) -> bool:
        """Finish the queued work and stop the worker thread; False if it did not stop."""
        drained = self.flush(timeout)
        self._queue.put(None)
        self._worker.join(timeout)
        return drained and not self._worker.is_alive()

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                self._queue.task_done()
                return
            try:
                getattr(self, f"_do_{task[0]}")(*task[1:])
            except Exception:  # noqa: BLE001
                logger.exception("pbi live scorer worker failed on %s", task[0])
            finally:
                self._queue.task_done()

    def _emit(self, name: str, doc: dict) -> None:
        for sink in self.sinks:
            try:
                sink(name, doc)
            except Exception:  # noqa: BLE001 - a sink failing must not stop scoring
                logger.exception("pbi live scorer: sink %r failed on %s", sink, name)

    def _do_start(self, run_uid: str) -> None:
        start = self._runs[run_uid].start
        model = self.model
        metadata = {
            "pbi_analysis": True,
            "raw_uid": run_uid,
            "raw_scan_id": start.get("scan_id"),
            "sample": start.get("sample"),
            "slot": start.get("slot"),
            "expected_composition": start.get("composition"),
            "model_path": self.model_info.get("path"),
            "model_sha256": self.model_info.get("model_sha256"),
            "model_recipes": model.recipes,
            "package_version": self.model_info.get("package_version"),
            "alpha": model.alpha,
            "threshold": model.threshold,
            "q_grid": {"q_min": model.grid.q_min, "q_max": model.grid.q_max,
                       "npt": model.grid.npt, "spacing": "log", "unit": "1/angstrom"},
        }
        bundle = compose_run(metadata={k: v for k, v in metadata.items() if v is not None})
        npt = model.grid.npt
        number = {"dtype": "number", "shape": [], "source": "pbi_bluesky"}
        string = {"dtype": "string", "shape": [], "source": "pbi_bluesky"}
        array = {"dtype": "array", "shape": [npt], "source": "pbi_bluesky",
                 "dtype_numpy": "<f8"}
        data_keys = {
            "raw_seq_num": {**number, "dtype": "integer", "dtype_numpy": "<i8"},
            "status": string, "reason": string,
            "score": number, "threshold": number, "p_value": number, "hyperscore": number,
            "is_anomaly": {**number, "dtype": "boolean", "dtype_numpy": "|b1"},
            "predicted_composition": string, "expected_composition": string,
            "top_attribution": string, "attributions": string,
            "q": {**array, "units": "1/angstrom"}, "intensity": {**array, "units": "1/cm"},
            "sigma": {**array, "units": "1/cm"},
        }
        descriptor = bundle.compose_descriptor(name=ANALYSIS_STREAM, data_keys=data_keys)
        self._analyses[run_uid] = _Analysis(bundle, descriptor)
        self._emit("start", bundle.start_doc)
        self._emit("descriptor", descriptor.descriptor_doc)

    def _reducer(self, poni_text: str) -> Reducer:
        key = hashlib.sha256(poni_text.encode()).hexdigest()
        reducer = self._reducers.get(key)
        if reducer is None:
            reducer = Reducer(load_geometry_text(poni_text), npt=self.npt, mask=self.mask,
                              dark=self.dark)
            self._reducers[key] = reducer
        return reducer

    def _frame(self, run: _Run, source: tuple) -> np.ndarray:
        kind, value = source
        if kind == "inline":
            frame = np.asarray(value)
        elif kind == "datum":
            frame = run.assets.frame_from_datum(value)
        else:
            frame = run.assets.frame_from_stream(*value)
        if frame.size == 0:
            raise FrameError("frame is empty")
        return frame

    def _do_frame(self, run_uid, seq_num, source, monitor, transmission, info) -> None:
        run = self._runs[run_uid]
        start = run.start
        result = FrameResult(run_uid, seq_num, "failed",
                             expected_composition=str(start.get("composition") or ""),
                             metadata={"sample": start.get("sample"), "slot": start.get("slot")})
        profile = None
        try:
            poni = start.get("geometry") or info.get("poni")
            if not poni:
                raise FrameError("no geometry: neither the start document ('geometry') nor "
                                 "the detector configuration carries PONI text")
            reducer = self._reducer(poni)
            frame = self._frame(run, source)
            if frame.ndim == 1 and info.get("shape"):
                frame = frame.reshape(info["shape"][-2:])
            thickness = start.get("thickness_cm")
            if monitor is None:
                raise FrameError("no incident-flux monitor (I0) reading with the frame (nor "
                                 "'i0' in the start document)")
            is_cell = start.get("sample_type") == "empty_cell"
            profile = reducer.reduce(
                frame, monitor=absolute_monitor(float(monitor), reducer.ai),
                transmission=float(transmission) if transmission else 1.0,
                thickness_cm=None if is_cell else thickness,
                background=None if is_cell else self.background,
            )
            if is_cell:
                self.background = profile
                result.status, result.reason = "reference", "empty cell: background updated"
            else:
                if self.background is None and not self._warned_no_background:
                    self._warned_no_background = True
                    logger.warning("no empty-cell background yet (measure a run with "
                                   "sample_type='empty_cell' or pass background=): profiles "
                                   "include the cell's scattering")
                expected = start.get("composition")
                if expected is not None and expected not in self.model.recipes:
                    raise FrameError(f"expected recipe {expected!r} unknown to the model "
                                     f"({self.model.recipes})")
                if thickness is None:
                    raise FrameError("no sample thickness ('thickness_cm') in the start "
                                     "document: absolute intensity unknown")
                verdict = self.model.score([profile], expected)[0]
                top = next(iter(verdict.details.get("attributions", {})), "")
                result = FrameResult(
                    run_uid, seq_num, "scored", score=verdict.score,
                    is_anomaly=verdict.is_anomaly, p_value=verdict.p_value,
                    hyperscore=verdict.hyperscore,
                    predicted_composition=verdict.predicted_composition,
                    expected_composition=verdict.expected_composition, top_attribution=top,
                    attributions=verdict.details.get("attributions", {}),
                    metadata=result.metadata,
                )
                if verdict.is_anomaly:
                    logger.warning(
                        "ANOMALY run %s frame %d sample %s: score %.3g p %.3g (expected %s, "
                        "looks like %s) top attribution %s", run_uid[:8], seq_num,
                        start.get("sample"), verdict.score, verdict.p_value,
                        verdict.expected_composition, verdict.predicted_composition, top)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a record
            result.reason = f"{type(exc).__name__}: {exc}"
            logger.info("frame %d of run %s failed: %s", seq_num, run_uid[:8], result.reason)
        self._record(run_uid, result, profile)

    def _do_shed(self, run_uid, seq_num) -> None:
        self._record(run_uid, FrameResult(run_uid, seq_num, "shed",
                                          reason="work queue full: frame not scored"), None)

    def _record(self, run_uid: str, result: FrameResult, profile: Profile | None) -> None:
        analysis = self._analyses.get(run_uid)
        npt = self.model.grid.npt
        nan = np.full(npt, np.nan)
        intensity = sigma = nan
        if profile is not None:
            try:
                intensity, sigma = self.model.grid.resample(profile)
            except ValueError:
                pass
        status_key = "scored" if result.status in ("scored", "reference") else result.status
        if analysis is not None:
            analysis.counts[status_key] = analysis.counts.get(status_key, 0) + 1
            analysis.counts["flagged"] += int(result.is_anomaly)
            if np.isfinite(result.score):
                analysis.max_score = max(analysis.max_score, result.score)
            if result.reason and result.status != "reference":
                analysis.reasons.append(f"frame {result.raw_seq_num}: {result.reason}")
            data = {
                "raw_seq_num": result.raw_seq_num, "status": result.status,
                "reason": result.reason, "score": result.score,
                "threshold": self.model.threshold, "p_value": result.p_value,
                "hyperscore": result.hyperscore, "is_anomaly": result.is_anomaly,
                "predicted_composition": result.predicted_composition,
                "expected_composition": result.expected_composition,
                "top_attribution": result.top_attribution,
                "attributions": json.dumps(result.attributions),
                "q": self.model.grid.q, "intensity": intensity, "sigma": sigma,
            }
            now = time.time()
            analysis.seq += 1
            event = analysis.descriptor.compose_event(
                data=data, timestamps=dict.fromkeys(data, now), seq_num=analysis.seq)
            self._emit("event", event)
        self.channel.put(result)

    def _do_stop(self, run_uid: str, raw_stop: dict) -> None:
        run = self._runs.pop(run_uid)
        analysis = self._analyses.pop(run_uid, None)
        for uid in [d for d, r in self._descriptor_run.items() if r == run_uid]:
            del self._descriptor_run[uid]
        if analysis is not None:
            counts = analysis.counts
            accounted = counts["scored"] + counts["failed"] + counts["shed"]
            verdict = ("anomalous" if counts["flagged"] else
                       "failed" if counts["scored"] == 0 and run.received else "normal")
            summary = {
                "frames": run.received, "scored": counts["scored"], "failed": counts["failed"],
                "shed": counts["shed"], "flagged": counts["flagged"],
                "accounted": accounted,
                "max_score": analysis.max_score if np.isfinite(analysis.max_score) else None,
                "verdict": verdict, "raw_exit_status": raw_stop.get("exit_status"),
                "failures": analysis.reasons[:20],
            }
            if accounted != run.received:
                logger.error("run %s: %d frames received but %d accounted for", run_uid[:8],
                             run.received, accounted)
            stop = analysis.bundle.compose_stop(
                exit_status="success" if accounted == run.received else "fail",
                reason=json.dumps(summary))
            stop = {**stop, "pbi_summary": summary}
            self._emit("stop", stop)
            self.channel.summaries[run_uid] = summary
        self.channel.finish(run_uid)

