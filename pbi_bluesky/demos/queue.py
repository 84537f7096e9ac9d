"""``pbi demo --queue``: the demo tray measured through the queue server, the agent deciding.

What happens, all on this machine (loopback, free ports, everything stopped at the end):

1. the simulated beamline IOC serves the demo tray and the loop's normal specimens (as in
   ``pbi demo``);
2. a Redis server, a Tiled server and the RE Manager start
   (:class:`~pbi_bluesky.testing.qserver.QueueStack`); the worker runs the profile's startup file
   (``profiles/profile_saxs/startup``) against a ``beamline.yaml`` for the IOC, so its
   session scores every frame live and writes raw and analysis runs to Tiled; the file
   names a model registry in the output folder (``scorer.registry``);
3. the loop (:mod:`pbi_bluesky.demos.queue_loop`, unless ``loop=False``), as a beamline
   runs it: the empty cell and a ``measure_normals`` item per recipe are queued, the worker
   flushes its runs to Tiled, this process trains from them in Tiled and promotes the model
   into the registry (:func:`pbi_bluesky.demos.loop.train_from_catalog`, the in-process
   demo's step); the worker's live scorer takes it at the survey's first run start (the shipped
   model stays when training fails or promotion is refused);
4. ``pbi agent`` runs as its own process with the shipped policy, following the verdict
   feed the session publishes on the queue server's Redis (and Tiled behind it) from the
   survey on;
5. the tray is queued as one ``measure_tray`` item per slot (the empty cell first), with
   autostart on; the agent queues a ``rescan`` of each flagged sample (next in the queue) and
   writes its decision to Tiled;
6. the outcomes are read back from Tiled and compared with the hidden truth: the same table
   and JSON keys as ``pbi demo`` (plus ``mode`` and ``rescans_queued``); ``model`` names the
   model of the survey's analysis runs, read from their start documents.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pbi_bluesky.agent import DEFAULT_POLICY_FILE, AnalysisResult
from pbi_bluesky.demos.beamline import (
    DEMO_TRAY,
    LOOP_EPOCHS,
    LOOP_SPECIMENS,
    LiveDemoReport,
    _report,
    catalog_of,
    format_report,
    review_command,
    sim_beamline_config,
)
from pbi_bluesky.demos.loop import TRAINING_PURPOSE, LoopReport, training_slots
from pbi_bluesky.demos.queue_loop import detector_names, queue_loop
from pbi_bluesky.plans import SampleOutcome
from pbi_bluesky.testing.agent import AgentProcess
from pbi_bluesky.testing.qserver import QueueStack

__all__ = ["QueueDemoReport", "analysis_results", "format_queue_report",
           "outcomes_from_catalog", "queue_loop", "rescan_latencies", "run_queue_demo",
           "survey_model", "tiled_request_stats", "tray_span", "write_dark"]

logger = logging.getLogger(__name__)


@dataclass
class QueueDemoReport(LiveDemoReport):
    """:class:`~pbi_bluesky.demos.beamline.LiveDemoReport` plus what went through the queue."""

    mode: str = "queue"
    rescans_queued: int = 0
    """Items the agent added to the queue."""
    queue_items: dict[str, int] = field(default_factory=dict)
    """Items the queue ran, by who added them and how they ended."""
    latency_s: dict[str, Any] = field(default_factory=dict)
    """Flagged frame -> start of its rescan (s), per flagged sample, median, p95."""
    tiled_requests: dict[str, Any] = field(default_factory=dict)
    """Requests the Tiled server handled during the tray (:func:`tiled_request_stats`),
    per run written and in ms each."""
    agent_status: dict[str, Any] = field(default_factory=dict)
    """The agent's last status (verdicts from the feed and from Tiled...)."""


def write_dark(instrument: Any, exposure_s: float, path: str | Path) -> Path:
    """Write the expected dark frame of an exposure as an EDF file; return its path.

    The file is what ``geometry.dark`` of a beamline.yaml names; the in-session demo passes the
    same frame to its scorer.
    """
    from fabio.edfimage import EdfImage

    from pbi_bluesky.simulate import expected_dark

    path = Path(path)
    EdfImage(data=np.asarray(expected_dark(instrument, exposure_s))).write(str(path))
    return path


def analysis_results(runs: Any, **equal: Any) -> list[AnalysisResult]:
    """Finished analysis runs in the catalog whose start keys equal ``equal``."""
    from tiled.queries import Key

    results = runs.search(Key("pbi_analysis") == True)  # noqa: E712 - a Tiled query
    for key, value in equal.items():
        results = results.search(Key(key) == value)
    out = [AnalysisResult.from_metadata(uid, node.metadata) for uid, node in results.items()]
    return sorted((r for r in out if r is not None), key=lambda r: r.time)


def _events(runs: Any, result: AnalysisResult) -> tuple[list[dict[str, Any]], str]:
    from pbi_bluesky.store.curves import analysis_frames

    run = runs[result.analysis_uid]
    # the curves as table columns (this version) or array nodes (older catalogs)
    frames = analysis_frames(run["pbi_anomaly"])
    columns = {} if frames.table is None else _columns(frames.table)
    columns.update(frames.curves or {})
    n = len(next(iter(columns.values()))) if columns else 0
    events = [{"raw_uid": result.raw_uid, **{k: v[i] for k, v in columns.items()}}
              for i in range(n)]
    top = ""
    if "pbi_attribution" in run:
        explained = _columns(run["pbi_attribution"].read())
        if len(explained.get("top_attribution", ())):
            top = str(explained["top_attribution"][0])
    return events, top


def _columns(table: Any) -> dict[str, np.ndarray]:
    """Columns of a stream read from Tiled (an xarray Dataset or a pandas DataFrame)."""
    names = list(table.data_vars) if hasattr(table, "data_vars") else list(table.columns)
    return {k: np.asarray(table[k]) for k in names}


def outcomes_from_catalog(runs: Any) -> tuple[list[SampleOutcome], list[dict[str, Any]]]:
    """Return one :class:`~pbi_bluesky.plans.SampleOutcome` per surveyed slot.

    Each with its classification from the ``pbi_decision`` records; and the survey's analysis
    events (to plot).
    """
    from pbi_bluesky.store.queries import decisions_of

    decided = decisions_of(runs)
    outcomes, events = [], []
    for result in analysis_results(runs, purpose="survey"):
        rows, top = _events(runs, result)
        events.extend(rows)
        scored = [e for e in rows if e["status"] == "scored"]
        worst = max(scored, key=lambda e: e["score"]) if scored else None
        flagged = None if not scored else any(bool(e["is_anomaly"]) for e in scored)
        classification = ("failed" if flagged is None else
                          decided.get(result.raw_uid, {}).get("classification", "flagged")
                          if flagged else "normal")
        outcomes.append(SampleOutcome(
            slot=int(result.slot), sample=result.sample, composition=result.composition,
            raw_uid=result.raw_uid, flagged=flagged,
            score=float(worst["score"]) if worst else None,
            p_value=float(worst["p_value"]) if worst else None, top_attribution=top,
            predicted_composition=str(worst["predicted_composition"]) if worst else "",
            classification=classification))
    return sorted(outcomes, key=lambda o: o.slot), events


def _frame_time(runs: Any, raw_uid: str) -> float:
    """When a one-frame raw run's frame was taken: its event time (else its stop time)."""
    run = runs[raw_uid]
    try:
        times = run["primary"].read(["time"])["time"]
        if len(times):
            return float(np.asarray(times)[-1])
    except Exception:  # noqa: BLE001 - older layouts: fall back to the stop document
        pass
    return float(run.metadata["stop"]["time"])


def rescan_latencies(runs: Any) -> dict[str, Any]:
    """Return the latency from each flagged frame to the start of its first rescan run.

    For every flagged survey measurement that was rescanned (the same for the in-plan
    survey_and_rescan and the
    agent: both record ``rescan_of`` in the rescan's start document). Also, per sample:
    ``analysis_done_s`` (the analysis run's stop document, composed by the scorer) and, for
    the agent, ``requested_s`` (its request record, written right after the item was
    added) and the stages its record carries: ``heard_s`` (the agent had the verdict, from
    the feed or Tiled), ``raw_found_s`` (the flagged raw run was in Tiled), ``item_added_s``
    (the queue server took the item).
    """
    from tiled.queries import Key

    per_sample = []
    for result in analysis_results(runs, purpose="survey"):
        if not result.is_flagged:
            continue
        rescans = runs.search(Key("rescan_of") == result.raw_uid).search(
            Key("purpose") == "rescan")
        starts = [node.metadata["start"] for _, node in rescans.items()
                  if not node.metadata["start"].get("pbi_analysis")]
        if not starts:
            continue
        first = min(s["time"] for s in starts)
        frame = _frame_time(runs, result.raw_uid)
        row = {"slot": result.slot, "sample": result.sample,
               "latency_s": round(first - frame, 3),
               "analysis_done_s": round((result.stop_time or frame) - frame, 3)}
        requests = runs.search(Key("purpose") == "pbi_agent_request").search(
            Key("rescan_of") == result.raw_uid)
        asked = sorted((node.metadata["start"] for _, node in requests.items()),
                       key=lambda start: start["time"])
        if asked:  # when the agent's request was recorded (just after its item_add)
            row["requested_s"] = round(asked[0]["time"] - frame, 3)
            for stage, when in (asked[0].get("timing") or {}).items():
                row[f"{stage}_s"] = round(float(when) - frame, 3)  # heard, raw_found...
        per_sample.append(row)
    out: dict[str, Any] = {"n": len(per_sample), "per_sample": per_sample}
    for key in ("latency_s", "analysis_done_s", "heard_s", "raw_found_s", "item_added_s",
                "requested_s"):
        values = np.array([r[key] for r in per_sample if key in r], dtype=float)
        name = key.removesuffix("_s")
        out[f"{name}_median_s"] = round(float(np.median(values)), 3) if values.size else None
        out[f"{name}_p95_s"] = (round(float(np.percentile(values, 95)), 3) if values.size
                                else None)
    out["median_s"], out["p95_s"] = out.pop("latency_median_s"), out.pop("latency_p95_s")
    return out


def tray_span(runs: Any) -> dict[str, Any]:
    """Return how long the tray took, read from the catalog alike for both paths.

    From the first raw run's start document to the last analysis run's stop document (the
    last verdict, a rescan's included): the tray as the beamline lives it, without starting
    and stopping the services around it (the IOC, Redis, Tiled, the RE Manager's worker),
    the loop before it (its runs carry ``demo_step``) or the report after it.

    Returns
    -------
    dict
        ``tray_s``, ``raw_runs``, ``analysis_runs``; ``tray_s`` is None without runs.
    """
    starts, stops = [], []
    for _, node in runs.items():
        md = node.metadata
        start = md.get("start") or {}
        if start.get("pbi_analysis"):
            if (md.get("stop") or {}).get("time") is not None:
                stops.append(float(md["stop"]["time"]))
        elif not str(start.get("purpose") or "").startswith("pbi_") and \
                start.get("demo_step") != TRAINING_PURPOSE:  # not agent records, not the loop
            starts.append(float(start["time"]))
    span = round(max(stops) - min(starts), 2) if starts and stops else None
    return {"tray_s": span, "raw_runs": len(starts), "analysis_runs": len(stops)}


def _wait_done(stack: QueueStack, agent: AgentProcess, n_slots: int, timeout: float) -> None:
    """Until every slot is analysed, every flagged sample decided and the queue is empty."""
    from pbi_bluesky.store.queries import decisions_of

    runs = stack.runs()
    api = stack.api()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not agent.alive():
                raise RuntimeError(f"pbi agent exited; log:\n{agent.log_tail()}")
            status = api.status()
            survey = analysis_results(runs, purpose="survey")
            decided = decisions_of(runs)
            open_flags = [r for r in survey if r.is_flagged and r.raw_uid not in decided]
            idle = status["manager_state"] == "idle" and status["items_in_queue"] == 0
            if len(survey) >= n_slots and not open_flags and idle:
                return
            if status["manager_state"] == "idle" and status["items_in_queue"] and \
                    not status["queue_autostart_enabled"]:
                last = (api.history_get().get("items") or [{}])[-1]
                raise RuntimeError(f"the queue stopped: {last.get('name')} ended "
                                   f"{last.get('result', {}).get('exit_status')}: "
                                   f"{last.get('result', {}).get('msg')}")
            time.sleep(1.0)
        raise TimeoutError(f"the tray was not measured and decided within {timeout:g} s")
    finally:
        api.close()


def _queue_items(stack: QueueStack) -> tuple[int, dict[str, int]]:
    api = stack.api()
    try:
        history = api.history_get().get("items") or []
    finally:
        api.close()
    counts: dict[str, int] = {}
    agent_items = 0
    for item in history:
        who = "agent" if (item.get("meta") or {}).get("pbi_agent") else "people"
        agent_items += who == "agent"
        key = f"{who} {item['name']} {item.get('result', {}).get('exit_status')}"
        counts[key] = counts.get(key, 0) + 1
    return agent_items, counts


def run_queue_demo(out_dir: str | Path, *, exposure_s: float = 0.2, seed: int = 7,
                   device_api: str = "ophyd", timeout: float = 1200.0,
                   policy: str | Path = DEFAULT_POLICY_FILE, poll_s: float = 0.5,
                   loop: bool = True, train_specimens: int = LOOP_SPECIMENS,
                   train_epochs: int = LOOP_EPOCHS) -> QueueDemoReport:
    """Run the queue demo (see module docstring); returns the report.

    ``loop``: first measure normals through the queue, train from Tiled and promote
    (``train_specimens`` per recipe, ``train_epochs`` epochs, as ``pbi demo``); False: the
    shipped model scores the survey.
    """
    from pbi_bluesky.models.bundle import load_default_model
    from pbi_bluesky.reduction import load_geometry
    from pbi_bluesky.simulate import Instrument
    from pbi_bluesky.store import flagged_runs
    from pbi_bluesky.testing.iocs import loopback_epics_env, start_sim_ioc, stop_sim_ioc

    out = Path(out_dir).resolve()
    for old in ("ioc", "queue", "agent", "registry", "trained_model"):
        shutil.rmtree(out / old, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    env = loopback_epics_env()
    os.environ.update(env)
    env = {**env, "OPHYD_CONTROL_LAYER": os.environ.get("OPHYD_CONTROL_LAYER", "caproto")}
    t0 = time.perf_counter()
    train = training_slots(train_specimens) if loop else []
    ioc = start_sim_ioc(out / "ioc", DEMO_TRAY + train, detector="Pilatus1M", seed=seed,
                        env=env)
    instrument = Instrument(geometry=load_geometry(str(ioc.poni_path)))
    dark = write_dark(instrument, exposure_s, out / "ioc" / "expected_dark.edf")
    overrides: dict[str, Any] = {"geometry": {"dark": str(dark)}}
    if train:  # the registry the worker's live scorer reads, and the loop promotes into
        overrides["scorer"] = {"registry": str(out / "registry")}
    cfg = sim_beamline_config(ioc, device_api=device_api).with_overrides(**overrides)
    stack = QueueStack(cfg, out / "queue", env=env)
    agent = AgentProcess(stack, out / "agent", policy=policy, poll_s=poll_s)
    loop_report = LoopReport()
    try:
        stack.start()
        if train:
            queue_loop(stack, out, train, exposure_s, loop_report, epochs=train_epochs,
                       timeout=timeout)
        agent.since = time.time()  # the survey's verdicts, not the loop's normals
        agent.start().wait_running()
        before = _metrics(stack)
        _queue_tray(stack, exposure_s)
        _wait_done(stack, agent, len(DEMO_TRAY), timeout)
        runs = stack.runs()
        after = _metrics(stack)
        outcomes, events = outcomes_from_catalog(runs)
        summaries = [_ledger(runs, r) for r in analysis_results(runs)]
        model = survey_model(runs)
        scored_by = (_registry_model(cfg, model.get("registry_version"))
                     or load_default_model())
        report = _report(out, outcomes, summaries, events, scored_by, runs, flagged_runs,
                         QueueDemoReport(loop=loop_report.as_dict() if train else {}))
        report.model = model
        report.rescans_queued, report.queue_items = _queue_items(stack)
        report.latency_s = rescan_latencies(runs)
        if before and after:
            report.tiled_requests = tiled_request_stats(before, after, len(runs))
        report.agent_status = agent.status()
        # the demo's Tiled server stops with it: its folder opens as an embedded catalog
        report.catalog = catalog_of(None, stack.tiled.workdir)
    finally:
        agent.stop()
        stack.stop()
        stop_sim_ioc(ioc)
    report.seconds = round(time.perf_counter() - t0, 1)
    (out / "demo_report.json").write_text(json.dumps(report.as_dict(), indent=1, default=str))
    return report


def survey_model(runs: Any) -> dict[str, Any]:
    """Return the model that scored the survey, as its analysis runs' start documents name it.

    ``model_sha256``, ``registry_version``, ``origin`` of the first survey analysis run;
    ``runs_by_model``: how many survey analysis runs each sha256 scored (one entry when
    one model scored the whole survey).
    """
    by: dict[str, int] = {}
    first: dict[str, Any] = {}
    for result in analysis_results(runs, purpose="survey"):
        start = runs[result.analysis_uid].metadata["start"]
        if not first:
            first = {"model_sha256": start.get("model_sha256"),
                     "registry_version": start.get("model_registry_version"),
                     "origin": start.get("model_origin")}
        sha = str(start.get("model_sha256"))
        by[sha] = by.get(sha, 0) + 1
    return {**first, "runs_by_model": by} if first else {}


def _registry_model(cfg: Any, version: Any) -> Any:
    """Return the registry's version ``version`` (for the embedding map), or None."""
    if not version or cfg.scorer.registry is None:
        return None
    from pbi_bluesky.models.registry import ModelRegistry

    registry = ModelRegistry(cfg.scorer.registry)
    return registry.load(registry.version(int(version)))


def tiled_request_metrics(uri: str, api_key: str | None) -> dict[tuple[str, str], list[float]]:
    """Return the Tiled server's own request counters (its Prometheus ``/metrics``).

    (method, endpoint) -> [requests, seconds spent in the server].
    """
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Apikey {api_key}"} if api_key else {}
    text = httpx.get(f"{uri.rstrip('/')}/metrics", headers=headers, timeout=10).text
    out: dict[tuple[str, str], list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "tiled_request_duration_seconds":
            continue
        for sample in family.samples:
            key = (sample.labels.get("method", ""), sample.labels.get("endpoint", ""))
            if sample.name.endswith("_count"):
                out.setdefault(key, [0.0, 0.0])[0] += sample.value
            elif sample.name.endswith("_sum"):
                out.setdefault(key, [0.0, 0.0])[1] += sample.value
    return out


def tiled_request_stats(before: dict[tuple[str, str], list[float]],
                        after: dict[tuple[str, str], list[float]], runs: int
                        ) -> dict[str, Any]:
    """Return what the server did between two :func:`tiled_request_metrics` snapshots.

    Write requests (every method but GET) and reads, per run written (``runs``) and in ms each
    (time inside the server), and per method and endpoint.
    """
    by: dict[str, dict[str, float]] = {}
    totals = {"write": [0.0, 0.0], "read": [0.0, 0.0]}
    for key, (count, seconds) in after.items():
        n0, s0 = before.get(key, [0.0, 0.0])
        n, sec = count - n0, seconds - s0
        if n <= 0:
            continue
        kind = "read" if key[0] in ("GET", "HEAD") else "write"
        totals[kind][0] += n
        totals[kind][1] += sec
        by[f"{key[0]} {key[1]}"] = {"requests": int(n), "ms_each": round(1000 * sec / n, 2)}
    out: dict[str, Any] = {"runs_written": runs}
    for kind, (n, sec) in totals.items():
        out[f"{kind}_requests"] = int(n)
        out[f"{kind}_requests_per_run"] = round(n / runs, 1) if runs else None
        out[f"{kind}_ms_each"] = round(1000 * sec / n, 2) if n else None
        out[f"{kind}_server_s"] = round(sec, 1)
    out["by_endpoint"] = dict(sorted(by.items(), key=lambda kv: -kv[1]["requests"]))
    return out


def _ledger(runs: Any, result: AnalysisResult) -> dict[str, int]:
    summary = runs[result.analysis_uid].metadata["stop"]["pbi_summary"]
    return {k: int(summary.get(k) or 0) for k in ("frames", "scored", "failed", "shed")}


def _metrics(stack: QueueStack) -> dict[tuple[str, str], list[float]]:
    try:
        return tiled_request_metrics(stack.tiled.uri, stack.tiled.api_key)
    except Exception as exc:  # noqa: BLE001 - a measurement, not the demo
        logger.warning("Tiled request metrics unavailable: %s", exc)
        return {}


def _queue_tray(stack: QueueStack, exposure_s: float) -> None:
    """One ``measure_tray`` item per slot, the empty cell first, as people would queue."""
    from bluesky_queueserver_api import BPlan

    cfg = stack.config
    dets = detector_names(cfg)
    md = {"proposal": "demo", "operator": "pbi demo --queue"}
    items = [BPlan("measure_tray", dets, cfg.changer.name, [0], exposure_s,
                   md={**md, "purpose": "reference"})]
    items += [BPlan("measure_tray", dets, cfg.changer.name, [s["slot"]], exposure_s,
                    md={**md, "purpose": "survey"}) for s in DEMO_TRAY]
    api = stack.api()
    try:
        response = api.item_add_batch(items)
        if not response.get("success"):
            raise RuntimeError(f"the queue server refused the tray: {response.get('msg')}")
        api.queue_autostart(True)
    finally:
        api.close()


def format_queue_report(report: QueueDemoReport) -> str:
    """Return the same table as ``pbi demo``, then what went through the queue."""
    lines = [format_report(report, review=False), "",
             f"through the queue server: {report.rescans_queued} rescan(s) queued by the "
             f"agent; items run: {report.queue_items}"]
    lat = report.latency_s
    if lat.get("n"):
        lines.append(f"flagged frame -> rescan start: median {lat['median_s']} s, p95 "
                     f"{lat['p95_s']} s over {lat['n']} rescanned sample(s)")
    if command := review_command(report.catalog):
        lines.append(f"review and label the flags in a browser:\n  {command}")
    return "\n".join(lines)
