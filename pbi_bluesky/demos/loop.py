"""The facility loop in the demo: measure normals, train from Tiled, promote, then survey.

Before the survey, :func:`measure_normals` measures the empty cell and a few normal
specimens of each recipe (extra tray slots the survey never visits) on the simulated
beamline; :func:`train_and_promote` reads those raw runs back from the session's catalog
(:func:`~pbi_bluesky.training.tiled.collect_normals`: the frames by reference, each run's
geometry, I0, transmission, thickness and the empty cell before it), trains a detector on
them, writes its bundle and training report, and promotes it into a registry in the demo's
output folder (:class:`~pbi_bluesky.models.registry.ModelRegistry`: refused when it cannot
flag or does not cover the beamline's q range). The session's live scorer names that
registry, so it scores the survey's runs with the promoted model from their first run
start; the shipped model stays the fallback when nothing could be promoted (the reason is
reported and the survey goes on).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim_iocs.tray import EMPTY_CELL

__all__ = ["LoopReport", "TRAINING_PURPOSE", "measure_normals", "train_and_promote",
           "training_slots"]

logger = logging.getLogger(__name__)

TRAINING_PURPOSE = "demo training normals"
"""``demo_step`` of the start documents of the normals the demo trains on."""

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
    """Return the plan: the empty cell, then one run per recipe, a frame of each specimen.

    Every specimen of a recipe is measured in that recipe's run (the changer moves between
    frames), so the normals span the batch-to-batch scatter of the specimens, not one
    specimen's counting noise. The start documents carry ``demo_step`` =
    :data:`TRAINING_PURPOSE`, ``composition`` and ``thickness_cm``.
    """
    from bluesky import plan_stubs as bps
    from bluesky import preprocessors as bpp

    from pbi_bluesky.plans import measure_tray
    from pbi_bluesky.plans.tray import set_exposure, split_monitors

    md = {"demo_step": TRAINING_PURPOSE, "operator": "make demo"}
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for slot in slots:
        by_recipe.setdefault(str(slot["composition"]), []).append(slot)

    def plan() -> Any:
        yield from measure_tray(beamline.readables, beamline.changer, [dict(EMPTY_CELL)],
                                exposure_s, md=md)
        detectors, monitors = split_monitors(list(beamline.readables))
        if monitors:
            from pbi_bluesky.devices.epics_async import setup_monitor_ndattributes

            for det in detectors:
                yield from setup_monitor_ndattributes(det, monitors)
        for det in detectors:
            yield from set_exposure(det, exposure_s)
        for recipe, group in by_recipe.items():
            run_md = {**md, "sample": f"normals {recipe}", "composition": recipe,
                      "thickness_cm": float(group[0].get("thickness_cm", 0.1)),
                      "specimens": [g["sample"] for g in group],
                      "slots": [g["slot"] for g in group], "exposure_s": exposure_s,
                      "plan_name": "measure_normals",
                      "detectors": [d.name for d in detectors],
                      "motors": [beamline.changer.name]}

            @bpp.stage_decorator(detectors)
            @bpp.run_decorator(md=run_md)
            def one_run(group: list[dict[str, Any]] = group) -> Any:
                for specimen in group:
                    yield from bps.mv(beamline.changer, specimen["slot"])
                    yield from bps.trigger_and_read([*detectors, beamline.changer])

            yield from one_run()

    return plan()


def train_and_promote(session: Any, out: Path, report: LoopReport, *, epochs: int = 20,
                      alpha: float | None = 0.1, seed: int = 0) -> LoopReport:
    """Train on the normals measured by :func:`measure_normals`; promote into the registry.

    ``session``: the demo's :class:`~pbi_bluesky.session.Session` (its catalog, its
    settings' registry, geometry, mask and q bins). ``alpha``: the model's false-positive
    rate per frame (a survey rescans what it flags, so a normal specimen is confirmed
    anomalous at about alpha squared); ``None``: the trainer's default. Any failure is
    recorded in ``report.refused`` and the shipped model stays in use.
    """
    from pbi_bluesky.models import AnomalyDetector, QGrid, TrainingConfig, save_bundle
    from pbi_bluesky.models.bundle import training_data_hash
    from pbi_bluesky.models.registry import ModelRegistry, RegistryError, beamline_q_range
    from pbi_bluesky.training.report import write_report
    from pbi_bluesky.training.tiled import collect_normals

    cfg = session.config
    registry = ModelRegistry(cfg.scorer.registry)
    report.registry = str(registry.root)
    t0 = time.perf_counter()
    if not session.raw_spool.flush(120):
        report.refused = "the raw runs did not reach the catalog in 120 s"
        report.say(f"training skipped: {report.refused}; the shipped model stays")
        return report
    try:
        # the live scorer's own reduction (its operators built already), once it is idle
        session.scorer.flush(120)
        reducer = session.scorer.core.reducing()
        normals = collect_normals(session.catalog.runs, reducer,
                                  query=(f"demo_step={TRAINING_PURPOSE}",))
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
        q_range = beamline_q_range(cfg.geometry.poni, npt=reducer.npt, mask=reducer.mask)
        version = registry.promote(bundle, q_range=q_range, note="pbi demo: the loop")
    except (RegistryError, OSError, ValueError) as exc:
        report.refused = str(exc)
        report.say(f"promotion refused: {exc}; the shipped model stays")
        return report
    report.promoted, report.model_sha256 = version.number, version.model_sha256
    report.say(f"promoted v{version.number} (sha256 {version.model_sha256[:12]}) into "
               f"{registry.root}: the survey's runs are scored by it from their start")
    return report
