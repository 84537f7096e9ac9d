"""The loop through the queue server: measure normals, flush, train from Tiled, promote.

Its one job is step 3 of ``pbi demo --queue`` (:mod:`pbi_bluesky.demos.queue`): as a
beamline would run it before a survey, queue the empty cell and one ``measure_normals`` item
per recipe, have the RE Manager's worker flush its runs to Tiled (``flush_session``), train
from those runs in Tiled and promote the model into the registry the worker's live scorer
reads (:func:`pbi_bluesky.demos.loop.train_from_catalog`, the in-process demo's step).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pbi_bluesky.demos.beamline import LOOP_EPOCHS
from pbi_bluesky.demos.loop import TRAINING_MD, LoopReport
from pbi_bluesky.testing.qserver import QueueStack

if TYPE_CHECKING:
    from pbi_bluesky.config import BeamlineConfig

__all__ = ["detector_names", "queue_loop"]


def queue_loop(stack: QueueStack, out: Path, slots: list[dict[str, Any]], exposure_s: float,
               report: LoopReport, *, epochs: int = LOOP_EPOCHS, timeout: float = 600.0
               ) -> LoopReport:
    """Run the loop through the queue server, as a beamline would, before the survey.

    Queues the empty cell (``measure_tray``) and one ``measure_normals`` item per recipe
    (the plans :func:`pbi_bluesky.demos.loop.measure_normals` runs in-process), waits until
    the worker ran them and flushed its runs to Tiled (``flush_session``), then trains
    from Tiled and promotes into the registry the worker reads
    (:func:`~pbi_bluesky.demos.loop.train_from_catalog`, with the beamline file's
    reduction).

    Parameters
    ----------
    stack
        The running queue stack; its ``config.scorer.registry`` is promoted into.
    out
        The demo's output folder (``out/trained_model``).
    slots
        The normal specimens (:func:`~pbi_bluesky.demos.loop.training_slots`), in the IOC's
        tray and so in the worker's sample list.
    exposure_s
        Exposure per frame (s).
    report
        Filled in (see :func:`~pbi_bluesky.demos.loop.train_from_catalog`).
    epochs
        Training epochs.
    timeout
        Bound on measuring the normals (s).

    Returns
    -------
    LoopReport
        ``report``.

    Raises
    ------
    RuntimeError
        The queue server refused an item or an item did not complete.
    """
    from bluesky_queueserver_api import BFunc, BPlan

    from pbi_bluesky.demos.loop import train_from_catalog
    from pbi_bluesky.scoring.engine import FrameScorer

    cfg = stack.config
    dets = detector_names(cfg)
    by_recipe: dict[str, list[int]] = {}
    for slot in slots:
        by_recipe.setdefault(str(slot["composition"]), []).append(int(slot["slot"]))
    items = [BPlan("measure_tray", dets, cfg.changer.name, [0], exposure_s,
                   md={**TRAINING_MD, "purpose": "reference"})]
    items += [BPlan("measure_normals", dets, cfg.changer.name, numbers, exposure_s,
                    md=TRAINING_MD) for numbers in by_recipe.values()]
    t0 = time.perf_counter()
    api = stack.api()
    try:
        before = len(api.history_get().get("items") or [])
        response = api.item_add_batch(items)
        if not response.get("success"):
            raise RuntimeError(f"the queue server refused the normals: {response.get('msg')}")
        api.queue_start()
        deadline = time.monotonic() + timeout
        while True:  # until the items ran, or the queue stopped at a failed one
            done = (api.history_get().get("items") or [])[before:]
            status = api.status()
            if status["manager_state"] == "idle" and (
                    status["items_in_queue"] == 0 or any(
                        i.get("result", {}).get("exit_status") != "completed" for i in done)):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the normals were not measured within {timeout:g} s")
            time.sleep(0.5)
        failed = [f"{i['name']}: {i.get('result', {}).get('exit_status')} "
                  f"{i.get('result', {}).get('msg')}" for i in done
                  if i.get("result", {}).get("exit_status") != "completed"]
        if len(done) < len(items) or failed:
            raise RuntimeError(f"measuring the normals through the queue failed: "
                               f"{len(done)} of {len(items)} items ran; {failed}")
        report.seconds["measure"] = round(time.perf_counter() - t0, 1)
        report.say(f"queued the empty cell and {len(by_recipe)} measure_normals items "
                   f"({len(slots)} normal specimens, one {exposure_s:g} s frame each, one "
                   f"run per recipe); the worker ran them in {report.seconds['measure']} s")
        task = api.function_execute(BFunc("flush_session", 120.0), run_in_background=False)
        if not task.get("success"):
            raise RuntimeError(f"the queue server refused flush_session: {task.get('msg')}")
        api.wait_for_completed_task(task["task_uid"], timeout=150,
                                    treat_not_found_as_completed=False)
        result = api.task_result(task["task_uid"]).get("result") or {}
    finally:
        api.close()
    if result.get("return_value") is not True:
        report.refused = (f"the worker's runs did not reach Tiled (flush_session: "
                          f"{result.get('msg') or result.get('return_value')})")
        report.say(f"training skipped: {report.refused}; the shipped model stays")
        return report
    reducer = FrameScorer(**{**FrameScorer.settings_kwargs(cfg), "reduce_only": True})
    return train_from_catalog(stack.runs(), reducer, cfg, out, report, epochs=epochs,
                              uri=stack.tiled.uri)


def detector_names(cfg: BeamlineConfig) -> list[str]:
    """Return the detector and its monitors by name, as queued items name them.

    Parameters
    ----------
    cfg
        The beamline settings the RE Manager's worker runs with.

    Returns
    -------
    list of str
        The detector, the I0 monitor and (where the file has one) the transmission monitor.
    """
    dets = [cfg.detector.name, cfg.monitors.i0_name]
    if cfg.monitors.transmission:
        dets.append(cfg.monitors.transmission_name)
    return dets
