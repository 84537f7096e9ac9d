"""The live scorer's output side: the document emitter and the attribution thread.

:class:`Emitter` hands each analysis document to every sink, one at a time; a sink that
raises is logged and skipped. :class:`Attributor` explains flagged frames (fitted
descriptors and exact Shapley values, :func:`~pbi_bluesky.scoring.analysis.explain_frame`)
on its own thread and closes analysis runs once their explanations are out, so attributions
never delay the next verdict.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from pbi_bluesky.infra.queues import wait_drained
from pbi_bluesky.live.channel import VerdictChannel
from pbi_bluesky.scoring.analysis import AnalysisRun, explain_frame
from pbi_bluesky.scoring.result import FrameResult

__all__ = ["Attributor", "Emitter", "Sink"]

logger = logging.getLogger(__name__)

Sink = Callable[[str, dict], Any]


class Emitter:
    """Calls every sink with each document, one document at a time (thread-safe).

    A sink that raises is logged and skipped, never allowed to stop scoring.
    """

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks
        self._lock = threading.Lock()

    def emit(self, name: str, doc: dict) -> None:
        """Hand one document to every sink, in order."""
        with self._lock:
            for sink in self.sinks:
                try:
                    sink(name, doc)
                except Exception:  # noqa: BLE001 - a sink failing must not stop scoring
                    logger.exception("pbi live scorer: sink %r failed on %s", sink, name)

    def emit_run_start(self, run: AnalysisRun) -> None:
        """Emit an analysis run's start and its two descriptors (verdicts, explanations)."""
        self.emit("start", run.bundle.start_doc)
        self.emit("descriptor", run.verdicts.descriptor_doc)
        self.emit("descriptor", run.explanations.descriptor_doc)


class Attributor:
    """Thread that explains flagged frames and closes analysis runs.

    A flagged frame is explained by fitted descriptors and exact Shapley values; an
    analysis run is closed once its explanations are out.

    Parameters
    ----------
    backlog
        Flagged frames waiting at most; past it a frame is marked ``attribution skipped``
        (it stays scored and flagged).
    """

    def __init__(self, model: Any, emitter: Emitter, channel: VerdictChannel, *,
                 backlog: int = 256) -> None:
        self.model, self.emitter, self.channel = model, emitter, channel
        self.backlog = int(backlog)
        self._queue: queue.Queue = queue.Queue()
        self._pending_explains = 0
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="pbi-attribution",
                                        daemon=True)
        self._thread.start()

    def submit(self, run_uid: str, run: AnalysisRun | None, result: FrameResult,
               intensity: np.ndarray, sigma: np.ndarray, recipe: str) -> None:
        """Queue a flagged frame for explanation (worker thread).

        Parameters
        ----------
        run_uid
            Start uid of the raw run (not used here: ``run`` carries what is needed).
        run
            The analysis run the explanation goes into; None: nothing is queued.
        result
            The frame's verdict; the explanation fills its attributions.
        intensity, sigma
            The frame resampled on the model's q grid.
        recipe
            The frame's expected composition.
        """
        if run is None or getattr(self.model, "population", None) is None:
            return
        with self._pending_lock:
            full = self._pending_explains >= self.backlog
            if not full:
                self._pending_explains += 1
        if full:
            run.counts["attribution_skipped"] += 1
            self._queue.put(("skipped", run, result))
            return
        self._queue.put(("explain", run, result, intensity, sigma, recipe))

    def finish_run(self, run_uid: str, run: AnalysisRun | None, received: int,
                   raw_stop: dict[str, Any], dropped_control: int) -> None:
        """Close the analysis run after its queued explanations (worker thread).

        Parameters
        ----------
        run_uid
            Start uid of the raw run; its verdict channel entry is finished.
        run
            The analysis run, whose stop document is emitted (None: only the channel).
        received
            Frames received from the raw run.
        raw_stop
            The raw run's stop document.
        dropped_control
            Control documents the inbox dropped, for the run's summary.
        """
        self._queue.put(("stop", run_uid, run, received, raw_stop, dropped_control))

    def join(self, timeout: float) -> bool:
        """Wait until every queued task is done; False on timeout."""
        return wait_drained(self._queue, timeout, 0.005)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread after the tasks already queued (waits at most ``timeout`` s)."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is None:
                    return
                getattr(self, f"_do_{task[0]}")(*task[1:])
            except Exception:  # noqa: BLE001
                logger.exception("pbi attribution thread failed on %s", task[0])
            finally:
                self._queue.task_done()

    def _do_explain(self, run: AnalysisRun, result: FrameResult, intensity: np.ndarray,
                    sigma: np.ndarray, recipe: str) -> None:
        with self._pending_lock:
            self._pending_explains -= 1
        status, features = explain_frame(self.model, result, intensity, sigma, recipe)
        self.emitter.emit("event", run.explained(result, status, features))

    def _do_skipped(self, run: AnalysisRun, result: FrameResult) -> None:
        self.emitter.emit("event", run.explanation(result, "skipped: attribution backlog full",
                                                   {}))

    def _do_stop(self, run_uid: str, run: AnalysisRun | None, received: int,
                 raw_stop: dict[str, Any], dropped_control: int) -> None:
        if run is not None:
            stop = run.stop_doc(received, raw_stop, dropped_control)
            self.emitter.emit("stop", stop)
            self.channel.summaries[run_uid] = stop["pbi_summary"]
        self.channel.finish(run_uid)
