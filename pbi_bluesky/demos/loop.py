"""The facility loop in the demo: measure normals, train from Tiled, promote, then survey.

Before the survey, :func:`measure_normals` measures the empty cell and a few normal
specimens of each recipe (extra tray slots the survey never visits) on the simulated
beamline, one run per recipe (:func:`pbi_bluesky.plans.measure_normals`; ``pbi demo
--queue`` queues the same plans). :func:`train_from_catalog` reads those raw runs back from
the catalog (:func:`~pbi_bluesky.training.tiled.collect_normals`: the frames by reference,
each run's geometry, I0, transmission, thickness and the empty cell before it), trains a
detector on them, writes its bundle and training report, and promotes it into the
registry the beamline settings name (:class:`~pbi_bluesky.models.registry.ModelRegistry`:
refused when it cannot flag or does not cover the beamline's q range); in-process,
:func:`train_and_promote` calls it once the session's runs are in its catalog. The live
scorer (the session's, or the queue server worker's) reads that registry, so it scores
the survey's runs with the promoted model from their first run start; the shipped model
stays the fallback when nothing could be promoted (the reason is reported and the survey
goes on).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim_iocs.tray import EMPTY_CELL

__all__ = ["LoopReport", "TRAINING_MD", "TRAINING_PURPOSE", "TRAINING_QUERY", "measure_normals",
           "train_and_promote", "train_from_catalog", "training_slots"]

logger = logging.getLogger(__name__)

TRAINING_PURPOSE = "demo training normals"
"""``demo_step`` of the start documents of the normals the demo trains on."""
TRAINING_MD = {"demo_step": TRAINING_PURPOSE, "operator": "pbi demo"}
"""Start-document metadata of the loop's runs (the empty cell and the normals)."""
TRAINING_QUERY = (f"demo_step={TRAINING_PURPOSE}",)
"""The selection the loop trains on (``pbi model train --tiled --query``)."""

RECIPES = ("25:75", "50:50", "75:25", "0:100", "100:0")


def training_slots(per_recipe: int = 6, first_slot: int = 21) -> list[dict[str, Any]]:
    """Return the normal specimens to train on: ``per_recipe`` per recipe, from ``first_slot``."""
    out, slot = [], first_slot
    for recipe in RECIPES:
        for i in range(per_recipe):
            out.append({"slot": slot, "sample": f"train-{recipe.replace(':', '-')}-{i + 1}",
                        "composition": recipe})
            slot += 1
    return out


@dataclass
class LoopReport:
    """What the loop did before the survey."""

    steps: list[str] = field(default_factory=list)
    promoted: int | None = None
    model_sha256: str | None = None
    refused: str | None = None
    normals: dict[str, Any] = field(default_factory=dict)
    bundle: str | None = None
    registry: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict."""
        return dict(self.__dict__)

    def say(self, line: str) -> None:
        """Record a step (and log it)."""
        self.steps.append(line)
        logger.info("loop: %s", line)


def measure_normals(beamline: Any, slots: list[dict[str, Any]], exposure_s: float) -> Any:
    """Return the plan: the empty cell, then :func:`~pbi_bluesky.plans.measure_normals`.

    One run per recipe, a frame of each specimen (the changer moves between frames), so the
    normals span the batch-to-batch scatter of the specimens, not one specimen's counting
    noise. Every start document carries ``demo_step`` = :data:`TRAINING_PURPOSE`; the
    queue demo queues the same two plans (:data:`TRAINING_MD`).
    """
    from pbi_bluesky.plans import measure_normals as normals_plan
    from pbi_bluesky.plans import measure_tray

    def plan() -> Any:
        yield from measure_tray(beamline.readables, beamline.changer, [dict(EMPTY_CELL)],
                                exposure_s, md={**TRAINING_MD, "purpose": "reference"})
        yield from normals_plan(beamline.readables, beamline.changer, slots, exposure_s,
                                md=TRAINING_MD)

    return plan()


def train_and_promote(session: Any, out: Path, report: LoopReport, *, epochs: int = 20,
                      alpha: float | None = 0.1, seed: int = 0) -> LoopReport:
    """Train on the normals measured by :func:`measure_normals` in ``session``; promote.

    ``session``: the demo's :class:`~pbi_bluesky.session.Session` (its catalog, its
    settings' registry, geometry, mask and q bins): once its raw runs are in the catalog,
    :func:`train_from_catalog` with the live scorer's own reduction (its operators built
    already).
    """
    if not session.raw_spool.flush(120):
        report.refused = "the raw runs did not reach the catalog in 120 s"
        report.say(f"training skipped: {report.refused}; the shipped model stays")
        return report
    session.scorer.flush(120)  # the reducers are shared: the live scorer must be idle
    return train_from_catalog(session.catalog.runs, session.scorer.core.reducing(),
                              session.config, out, report, epochs=epochs, alpha=alpha,
                              seed=seed)


def train_from_catalog(runs: Any, reducer: Any, config: Any, out: Path, report: LoopReport,
                       *, epochs: int = 20, alpha: float | None = 0.1, seed: int = 0,
                       uri: str | None = None) -> LoopReport:
    """Train on the loop's normals in a catalog; promote into the beamline's registry.

    The one training step of both demos (in-process and ``--queue``).

    Parameters
    ----------
    runs
        The catalog's runs container holding the runs of :func:`measure_normals`
        (selected by :data:`TRAINING_QUERY`).
    reducer
        A ``FrameScorer(reduce_only=True)`` with the beamline's reduction settings.
    config
        The :class:`~pbi_bluesky.config.BeamlineConfig`: its ``scorer.registry`` is
        promoted into (the registry the live scorer reads), its geometry, mask and
        ``reducer``'s q bins give the q range a model must cover.
    out
        The bundle is written to ``out/trained_model`` (with its training report).
    report
        Filled in: the steps, the normals read, the promoted version, or why nothing was
        promoted (``refused``; the shipped model then stays).
    epochs, alpha, seed
        Training settings; ``alpha``: the model's false-positive rate per frame (a survey
        rescans what it flags, so a normal specimen is confirmed anomalous at about alpha
        squared); ``None``: the trainer's default.
    uri
        The catalog's address, recorded in the bundle.

    Returns
    -------
    LoopReport
        ``report``.
    """
    from pbi_bluesky.models import AnomalyDetector, QGrid, TrainingConfig, save_bundle
    from pbi_bluesky.models.bundle import training_data_hash
    from pbi_bluesky.models.registry import ModelRegistry, RegistryError, beamline_q_range
    from pbi_bluesky.training.report import write_report
    from pbi_bluesky.training.tiled import collect_normals

    if config.scorer.registry is None:
        raise ValueError("the beamline settings name no model registry (scorer.registry)")
    registry = ModelRegistry(config.scorer.registry)
    report.registry = str(registry.root)
    t0 = time.perf_counter()
    try:
        normals = collect_normals(runs, reducer, query=TRAINING_QUERY, uri=uri)
    except Exception as exc:  # noqa: BLE001 - the demo goes on with the shipped model
        report.refused = f"reading the normals failed: {type(exc).__name__}: {exc}"
        report.say(f"training skipped: {report.refused}; the shipped model stays")
        return report
    summary = normals.summary()
    report.normals = {k: summary[k] for k in ("used", "refused", "frames", "per_recipe")}
    report.seconds["read_reduce"] = round(time.perf_counter() - t0, 1)
    report.say(f"read back {summary['frames']} normal frames of {summary['used']} runs from "
               f"Tiled ({summary['refused']} refused) in {report.seconds['read_reduce']} s: "
               + ", ".join(f"{k} {v}" for k, v in summary["per_recipe"].items()))
    for r in normals.refused:
        report.say(f"  refused run {r['uid'][:8]} ({r['sample']}): {r['reason']}")
    t1 = time.perf_counter()
    bundle = out / "trained_model"
    try:
        if not normals.profiles:
            raise ValueError("no usable normal frames")
        grid = QGrid.for_profiles(normals.profiles, preferred=(0.008, 0.19))
        detector = AnomalyDetector(grid, training=TrainingConfig(epochs=epochs, seed=seed,
                                                                  alpha=alpha))
        detector.fit(normals.profiles, normals.recipes, progress=False)
        intensity, sigma = detector.resample(normals.profiles)
        save_bundle(detector, bundle, training_data_sha256=training_data_hash(
            intensity, sigma, normals.recipes), extra={
            "training_source": normals.selection, "training_runs": normals.run_uids,
            "training_summary": summary})
        write_report(bundle, detector, normals.profiles, normals.recipes,
                     refused=normals.refused, source=normals.selection)
    except Exception as exc:  # noqa: BLE001 - the demo goes on with the shipped model
        report.refused = f"training failed: {type(exc).__name__}: {exc}"
        report.say(f"{report.refused}; the shipped model stays")
        return report
    report.bundle = str(bundle)
    report.seconds["train"] = round(time.perf_counter() - t1, 1)
    cal = detector.calibration_summary()
    report.say(f"trained {bundle} in {report.seconds['train']} s ({epochs} epochs; "
               f"{cal['method']} conformal calibration, {cal['n_calibration']} normals, alpha "
               f"{cal['alpha']:g}); report {bundle / 'report.html'}")
    try:
        q_range = beamline_q_range(config.geometry.poni, npt=reducer.npt, mask=reducer.mask)
        version = registry.promote(bundle, q_range=q_range, note="pbi demo: the loop")
    except (RegistryError, OSError, ValueError) as exc:
        report.refused = str(exc)
        report.say(f"promotion refused: {exc}; the shipped model stays")
        return report
    report.promoted, report.model_sha256 = version.number, version.model_sha256
    report.say(f"promoted v{version.number} (sha256 {version.model_sha256[:12]}) into "
               f"{registry.root}: the survey's runs are scored by it from their start")
    return report
