"""Re-score an archive of raw runs with a new model on a Dask cluster (``pbi rescore``).

The client selects raw runs in Tiled (``--since``/``--until`` on the start time, ``--query
KEY=VALUE`` equality on start-document keys), drops those this model has already
re-scored (an analysis run tagged with the model's sha256 that has its stop document),
deletes partial ones (an earlier attempt that died) and submits one task per raw run to a
``dask.distributed`` cluster (a ``LocalCluster`` or a scheduler address, e.g. one
dask-jobqueue started on SLURM).

A task runs on a worker process: it reads the run's frames, I0 and transmission back from
Tiled (inline arrays, or the detector's HDF5 that Tiled serves), scores them in chunks with
the same :class:`~pbi_bluesky.scoring.engine.FrameScorer` as the live scorer, and writes a new
analysis run with ``TiledWriter``: linked to the raw run (``raw_uid``, ``rescore_of``),
tagged with the model's sha256 (``model_sha256``, ``pbi_rescore``), every frame an event,
flagged frames explained, and the stop document with the frame ledger. It carries no
``pbi_analysis`` key: ``pbi flagged`` and the agent keep acting on live analyses only.

With a model registry (``registry``: ``scorer.registry`` of the beamline file), the job
takes the registry's current model when it starts (the given model is the fallback when
nothing is promoted) and keeps it for every run it re-scores: a promotion during a re-scoring
applies to the next one. Each analysis run names the model's sha256 and registry version.

Each worker process loads the model bundle once (safetensors, no pickle); tasks and
results travel between the scheduler and its workers with Dask's own serialisation
(a trusted cluster), and nothing read from Tiled is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pbi_bluesky.scoring.tiled import run_frames
from pbi_bluesky.store.queries import RECORD_PURPOSES, cells_before, select_runs

__all__ = ["RECORD_PURPOSES", "RescoreJob", "cells_before", "rescore", "rescore_run",
           "select_runs"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RescoreJob:
    """What every task needs (plain data: it travels to the workers).

    Parameters
    ----------
    model
        Path of the new model bundle (``None``: the shipped model), or the fallback when
        ``registry`` has a current model.
    tiled_uri, api_key
        The catalog (``None``: ``PBI_TILED_URI`` or the embedded one).
    scorer
        Further :class:`~pbi_bluesky.scoring.engine.FrameScorer` settings (mask/dark/poni paths,
        keys, npt, ...).
    chunk
        Frames read and scored at a time.
    tiled_batch
        Analysis events per Tiled write.
    registry
        A model registry folder: :func:`rescore` takes its current version when it starts.
    version
        The registry version the job re-scores with (set by :func:`rescore`).
    """

    model: str | None
    tiled_uri: str | None = None
    api_key: str | None = field(default=None, repr=False)  # a secret: never in a repr
    scorer: dict[str, Any] = field(default_factory=dict)
    chunk: int = 16
    tiled_batch: int = 256
    registry: str | None = None
    version: int | None = None

    @property
    def key(self) -> str:
        """Return the job's identity: model, catalog and scorer settings, as JSON."""
        return json.dumps([self.model, self.tiled_uri, self.scorer, self.registry,
                           self.version], sort_keys=True, default=str)

    def pinned(self) -> RescoreJob:
        """Return the job pinned to the registry's current model.

        Itself without a registry, or when nothing is promoted (its model serves).
        """
        if self.registry is None or self.version is not None:
            return self
        from pbi_bluesky.models.registry import ModelRegistry

        current = ModelRegistry(self.registry).current()
        if current is None:
            return self
        return replace(self, model=str(current.path), version=current.number)

    def load_model(self) -> Any:
        """Load the job's model (checked against the registry when it names a version)."""
        from pbi_bluesky.models import load_bundle
        from pbi_bluesky.models.bundle import load_default_model

        if self.version is not None:
            from pbi_bluesky.models.registry import ModelRegistry

            reg = ModelRegistry(self.registry)
            return reg.load(reg.version(self.version))
        return load_bundle(self.model) if self.model is not None else load_default_model()


def rescored(runs: Any, model_sha256: str) -> tuple[set[str], list[str]]:
    """(raw uids this model has completely re-scored, uids of partial re-scorings)."""
    from tiled.queries import Key

    done, partial = set(), []
    for uid, node in runs.search(Key("pbi_rescore") == True).search(  # noqa: E712
            Key("model_sha256") == model_sha256).items():
        md = node.metadata
        if md.get("stop"):
            done.add(md["start"].get("rescore_of"))
        else:
            partial.append(uid)
    return done, partial


# -- on a worker ----------------------------------------------------------------------------
_STATE: dict[str, Any] = {}
_STATE_LOCK = threading.Lock()


def _scorer_and_runs(job: RescoreJob) -> tuple[Any, Any]:
    """Return this process's scorer and catalog for the job (built once per process)."""
    with _STATE_LOCK:
        state = _STATE.get(job.key)
        if state is None:
            import torch

            from pbi_bluesky.scoring.engine import FrameScorer
            from pbi_bluesky.store import Catalog

            torch.set_num_threads(1)
            state = _STATE[job.key] = (FrameScorer(job.load_model(), **job.scorer),
                                       Catalog(job.tiled_uri, api_key=job.api_key))
        return state


def _background(job: RescoreJob, cell_uid: str | None) -> Any:
    """Return the background profile of an empty-cell run (its last frame reduced), cached."""
    if cell_uid is None:
        return None
    key = f"{job.key}|{cell_uid}"
    if key not in _STATE:
        core, catalog = _scorer_and_runs(job)
        profile = None
        for batch in run_frames(core, catalog.runs[cell_uid], cell_uid, job.chunk, None):
            for outcome in core.process(batch):
                if outcome.result.status == "reference":
                    profile = outcome.profile
        _STATE[key] = profile
    return _STATE[key]


def rescore_run(job: RescoreJob, raw_uid: str, cell_uid: str | None = None) -> dict[str, Any]:
    """Re-score one raw run and write its analysis run (see the module docstring).

    ``cell_uid``: the empty-cell run whose background to subtract.
    """
    from pbi_bluesky.scoring.analysis import explain_frame

    core, catalog = _scorer_and_runs(job)
    background = _background(job, cell_uid)
    runs = catalog.runs
    raw = runs[raw_uid]
    start = dict(raw.metadata["start"])
    analysis = core.begin_analysis(start, live=False, extra={
        "pbi_rescore": True, "rescore_of": raw_uid,
        "rescored_at": datetime.now().isoformat(timespec="seconds")})
    writer = catalog.writer(job.tiled_batch, composed=True)
    writer("start", analysis.bundle.start_doc)
    writer("descriptor", analysis.verdicts.descriptor_doc)
    writer("descriptor", analysis.explanations.descriptor_doc)
    frames = 0
    for batch in run_frames(core, raw, raw_uid, job.chunk, background):
        for outcome in core.process(batch):
            result = outcome.result
            writer("event", analysis.record(result, outcome.resampled))
            if outcome.explain and outcome.resampled is not None and \
                    getattr(core.model, "population", None) is not None:
                status, features = explain_frame(core.model, result, *outcome.resampled,
                                                 result.expected_composition)
                writer("event", analysis.explained(result, status, features))
        frames += len(batch)
    stop = analysis.stop_doc(frames, raw.metadata.get("stop") or {}, 0,
                             extra={"rescore_of": raw_uid})
    writer("stop", stop)
    return {"raw_uid": raw_uid, "analysis_uid": analysis.bundle.start_doc["uid"],
            **{k: stop["pbi_summary"][k] for k in ("frames", "scored", "failed", "flagged",
                                                    "verdict")}}


# -- the client ----------------------------------------------------------------------------
def rescore(job: RescoreJob, client: Any, *, since: Any = None, until: Any = None,
            query: tuple[str, ...] = (), progress: bool = True) -> dict[str, Any]:
    """Re-score every selected raw run not yet done by this model, on ``client``'s cluster.

    Parameters
    ----------
    job : RescoreJob
        The model, catalog and scorer settings.
    client : distributed.Client
        The Dask client whose cluster does the work.
    since, until : Any, optional
        Only runs started in this window (ISO time or epoch s).
    query : tuple of str
        ``KEY=VALUE`` equality on start-document keys.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        A summary: runs selected, skipped (already done), re-scored, failed (with the
        reason), and each run's ledger.
    """
    from distributed import as_completed
    from tqdm import tqdm

    from pbi_bluesky.store import Catalog

    job = job.pinned()  # the registry's current model, for the whole job
    model = job.load_model()
    sha = model.bundle_info["model_sha256"]
    catalog = Catalog(job.tiled_uri, api_key=job.api_key)
    runs = catalog.runs
    selected = select_runs(runs, since=since, until=until, query=query)
    cells = cells_before(runs, selected)
    done, partial = rescored(runs, sha)
    for uid in partial:  # an earlier attempt died mid-run: start that run again
        catalog.delete_partial(uid)
    todo = [u for u, _start in selected if u not in done]
    summary: dict[str, Any] = {"model_sha256": sha, "model_registry": job.registry,
                               "model_registry_version": job.version,
                               "selected": len(selected),
                               "skipped": len(selected) - len(todo),
                               "partial_deleted": len(partial), "rescored": [],
                               "failed": {}}
    if not todo:
        return summary
    futures = {client.submit(rescore_run, job, uid, cells.get(uid),
                             key=f"pbi-rescore-{uid}-{sha[:12]}", pure=False): uid
               for uid in todo}
    bar = tqdm(total=len(futures), desc="rescoring", unit="run", disable=not progress)
    try:
        for future in as_completed(futures):
            uid = futures[future]
            try:
                summary["rescored"].append(future.result())
            except Exception as exc:  # noqa: BLE001 - reported per run, the rest go on
                summary["failed"][uid] = f"{type(exc).__name__}: {exc}"
                logger.error("rescoring %s failed: %s", uid[:8], exc)
            bar.update(1)
    finally:
        bar.close()
    return summary
