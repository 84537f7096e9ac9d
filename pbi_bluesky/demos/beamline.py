"""``make demo``: a live SAXS survey on a simulated beamline, anomalies flagged as it runs.

What happens, all on this machine:

1. a caproto IOC (``sim_iocs.saxs_beamline``) serves a Pilatus 1M detector, a sample
   changer, beam monitors and fault injection over loopback Channel Access, for a tray of
   14 PS/PMMA specimens whose hidden truth (normal, anomaly kind, a transient beam dump)
   only the tray file knows;
2. an embedded Tiled catalog (SQLite + files, no server) receives the raw runs and the
   analysis runs through ``bluesky_tiled_plugins.TiledWriter``, behind local spools;
3. the loop (:mod:`pbi_bluesky.demos.loop`, unless ``loop=False``): a real RunEngine with
   ophyd devices measures the empty cell and a few normal specimens of each recipe (extra
   slots), the normals are read back from Tiled, a detector is trained on them and promoted
   into a model registry in the output folder (the shipped model stays the fallback when
   that fails or is refused);
4. the RunEngine runs :func:`~pbi_bluesky.plans.survey_and_rescan` over the tray;
   the :class:`~pbi_bluesky.live.LiveScorer` reduces (pyFAI geometry from the run) and
   scores every frame off the RunEngine thread with the registry's current model (it
   takes the promoted one at the survey's first run start), and flagged
   samples are rescanned to tell a material defect from a transient glitch;
5. the results are printed, compared with the hidden truth, queried back from Tiled and
   plotted; everything is shut down.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim_iocs.tray import default_tray

__all__ = ["DEMO_TRAY", "LiveDemoReport", "format_report", "run_live_demo",
           "sim_beamline_config"]

logger = logging.getLogger(__name__)

DEMO_TRAY: list[dict[str, Any]] = [slot.to_dict() for slot in default_tray()]
"""The demo tray: 7 defective specimens, 6 normal ones and 1 normal one hit by a beam dump."""

LOOP_SPECIMENS = 10
"""Normal specimens per recipe the demo's loop trains on (one frame each)."""
LOOP_EPOCHS = 20
"""Training epochs of the demo's loop."""


@dataclass
class LiveDemoReport:
    """Everything the demo measured and concluded."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    precision: float = 0.0
    recall: float = 0.0
    transient_correct: bool = False
    query: str = ""
    flagged: list[dict[str, Any]] = field(default_factory=list)
    frames: dict[str, int] = field(default_factory=dict)
    png: str = ""
    seconds: float = 0.0
    catalog: dict[str, str] = field(default_factory=dict)
    """The catalog the demo wrote: ``{"data_dir": FOLDER}`` or ``{"tiled": URI}``."""
    loop: dict[str, Any] = field(default_factory=dict)
    """What the loop did before the survey (:class:`~pbi_bluesky.demos.loop.LoopReport`)."""
    model: dict[str, Any] = field(default_factory=dict)
    """The model that scored the survey: ``model_sha256``, ``registry_version``, ``origin``
    (``registry``, ``bundle`` or ``shipped``)."""

    def as_dict(self) -> dict[str, Any]:
        """Return the report's fields as a plain dict."""
        return dict(self.__dict__)


def catalog_of(uri: str | None, data_dir: str | Path | None) -> dict[str, str]:
    """Return the ``catalog`` entry of a report: a Tiled server's URI, else the folder."""
    if uri:
        return {"tiled": uri}
    return {"data_dir": str(Path(data_dir).resolve())} if data_dir is not None else {}


def review_command(catalog: dict[str, str]) -> str:
    """Return the ``pbi review`` command line for a report's ``catalog`` ('' if none)."""
    import shlex

    if "tiled" in catalog:
        return f"pbi review --tiled {shlex.quote(catalog['tiled'])}"
    if "data_dir" in catalog:
        return f"pbi review --data-dir {shlex.quote(catalog['data_dir'])}"
    return ""


def sim_beamline_config(ioc: Any, *, name: str = "pbi-sim", device_api: str = "ophyd",
                        data_dir: str | Path | None = None, **sections: Any) -> Any:
    """Return the :class:`~pbi_bluesky.config.BeamlineConfig` of a running simulated IOC.

    The IOC is a :class:`pbi_bluesky.testing.iocs.SimIOC`; the config holds its prefix, data root,
    PONI and mask files, and a sample list with what a user knows of its tray (no hidden truth).
    """
    import yaml

    from pbi_bluesky.config import (
        BeamlineConfig,
        ChangerConfig,
        DetectorConfig,
        GeometryConfig,
        MonitorConfig,
    )
    from sim_iocs.tray import public_tray

    p = ioc.prefix
    tray_file = Path(ioc.tray_path).with_name("samples.yaml")
    tray_file.write_text(yaml.safe_dump({"slots": public_tray(ioc.tray)}, sort_keys=False))
    cfg = BeamlineConfig(
        detector=DetectorConfig(prefix=p, write_path=str(ioc.data_root)),
        changer=ChangerConfig(motor=f"{p}changer"),
        monitors=MonitorConfig(i0=f"{p}mon:I0", transmission=f"{p}mon:Transmission"),
        geometry=GeometryConfig(poni=str(ioc.poni_path), mask=str(ioc.mask_path)),
        name=name, device_api=device_api, tray=str(tray_file), plots=False,
        data_dir=None if data_dir is None else str(data_dir), source=f"sim IOC {p}")
    return cfg.with_overrides(**sections) if sections else cfg


def _truth(slot: dict[str, Any]) -> str:
    if slot.get("kind", "normal") != "normal":
        return slot["kind"]
    if slot.get("faults"):
        return "transient " + ",".join(slot["faults"])
    return "normal"


class _Collector:
    """Keeps the analysis events (for the plot)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.raw_of_start: dict[str, str] = {}
        self.run_of_descriptor: dict[str, str] = {}

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self.raw_of_start[doc["uid"]] = doc.get("raw_uid", "")
        elif name == "descriptor":
            self.run_of_descriptor[doc["uid"]] = self.raw_of_start.get(doc["run_start"], "")
        elif name == "event":
            self.events.append({"raw_uid": self.run_of_descriptor.get(doc["descriptor"]),
                                **doc["data"]})


def run_live_demo(out_dir: str | Path, *, exposure_s: float = 0.2, seed: int = 7,
                  verdict_timeout: float = 60.0, device_api: str = "ophyd",
                  loop: bool = True, train_specimens: int = LOOP_SPECIMENS,
                  train_epochs: int = LOOP_EPOCHS, slots: list[int] | None = None
                  ) -> LiveDemoReport:
    """Run the live demo (see module docstring); returns the report.

    ``slots``: survey only these slots of :data:`DEMO_TRAY` (default: all 14).

    ``loop``: measure normals, train and promote before the survey (one frame of each of
    ``train_specimens`` normal specimens per recipe, ``train_epochs`` epochs); False: the
    shipped model scores the survey.
    """
    import shutil

    from pbi_bluesky.demos.loop import training_slots
    from pbi_bluesky.testing.iocs import loopback_epics_env, start_sim_ioc, stop_sim_ioc

    out = Path(out_dir)
    # each demo starts from an empty catalog and registry
    for old in ("data", "ioc", "registry", "trained_model"):
        shutil.rmtree(out / old, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    env = loopback_epics_env()
    os.environ.update(env)  # before ophyd's caproto client / libca is created
    os.environ.setdefault("OPHYD_CONTROL_LAYER", "caproto")
    t0 = time.perf_counter()
    train = training_slots(train_specimens) if loop else []
    known = {s["slot"] for s in DEMO_TRAY}
    if slots is not None and (not slots or not set(slots) <= known):
        raise ValueError(f"slots must be some of the demo tray's {sorted(known)}, got {slots}")
    ioc = start_sim_ioc(out / "ioc", DEMO_TRAY + train, detector="Pilatus1M", seed=seed,
                        env=env)
    logger.info("sim IOC %s up (Pilatus 1M, %d slots)", ioc.prefix, len(DEMO_TRAY))
    try:
        report = _survey(out, ioc, exposure_s, verdict_timeout, device_api,
                         train=train, train_epochs=train_epochs, slots=slots)
    finally:
        stop_sim_ioc(ioc)
    report.seconds = round(time.perf_counter() - t0, 1)
    (out / "demo_report.json").write_text(json.dumps(report.as_dict(), indent=1, default=str))
    return report


def demo_dark(ioc: Any, exposure_s: float) -> Any:
    """Return the simulated detector's expected dark image for an exposure."""
    from pbi_bluesky.reduction import load_geometry
    from pbi_bluesky.simulate import Instrument, expected_dark

    return expected_dark(Instrument(geometry=load_geometry(str(ioc.poni_path))), exposure_s)


def demo_session(out: Path, ioc: Any, exposure_s: float, device_api: str = "ophyd",
                 registry: Path | None = None) -> Any:
    """Build the demo's beamline session.

    It holds the sim IOC's beamline.yaml, the shipped model (the fallback of ``registry``,
    when given), an embedded catalog under ``out/data`` and the expected dark current of the
    exposure.
    """
    from pbi_bluesky.session import build_session

    cfg = sim_beamline_config(ioc, device_api=device_api)
    if registry is not None:
        cfg = cfg.with_overrides(scorer={"registry": str(registry)})
    return build_session(cfg, data_root=out / "data", plots=False, live_table=False,
                         persistent_md=False,
                         scorer_kwargs={"dark": demo_dark(ioc, exposure_s)})


def _survey(out: Path, ioc: Any, exposure_s: float, verdict_timeout: float,
            device_api: str, *, train: list[dict[str, Any]] | None = None,
            train_epochs: int = LOOP_EPOCHS, slots: list[int] | None = None
            ) -> LiveDemoReport:
    from pbi_bluesky.demos.loop import LoopReport, measure_normals
    from pbi_bluesky.plans import survey_and_rescan, use_tray
    from pbi_bluesky.store import flagged_runs

    session = demo_session(out, ioc, exposure_s, device_api,
                           registry=out / "registry" if train else None)
    collector = _Collector()
    session.scorer.sinks.append(collector)
    bl, scorer = session.beamline, session.scorer
    outcomes: list[Any] = []
    loop = LoopReport()
    if train:
        t0 = time.perf_counter()
        try:
            session.RE(measure_normals(bl, train, exposure_s))
        except Exception:
            session.close(30)
            use_tray(None)
            raise
        loop.seconds["measure"] = round(time.perf_counter() - t0, 1)
        loop.say(f"measured the empty cell and {len(train)} normal specimens (one "
                 f"{exposure_s:g} s frame each, one run per recipe) in "
                 f"{loop.seconds['measure']} s")
        _train_while_the_changer_returns(session, out, loop, train_epochs)

    def plan():
        result = yield from survey_and_rescan(
            bl.readables, bl.changer, slots or [s["slot"] for s in DEMO_TRAY], exposure_s,
            channel=scorer.channel, reference_slots=[0], verdict_timeout=verdict_timeout,
            md={"proposal": "demo", "operator": "make demo"})
        outcomes.extend(result)

    try:
        session.RE(plan())
    finally:
        if not session.close(120):
            logger.warning("some runs are still in the spool (%s)", session.data_dir)
        use_tray(None)
    report = _report(out, outcomes, scorer.channel.summaries.values(), collector.events,
                     scorer.model, session.catalog.runs, flagged_runs,
                     LiveDemoReport(loop=loop.as_dict() if train else {}))
    report.catalog = catalog_of(session.catalog.uri, session.catalog.data_dir)
    report.model = {k: scorer.model_info.get(k)
                    for k in ("model_sha256", "registry_version", "origin")}
    return report


def _train_while_the_changer_returns(session: Any, out: Path, loop: Any, epochs: int) -> None:
    """Train and promote on a thread while the RunEngine moves the changer to slot 0.

    The normals sit at slots 21-70 and the survey starts at the empty cell (slot 0): the
    sim changer's trip back took 14.9 s of a 90 s demo, the read and training about 9 s.
    The live scorer is idle (no run is open) and the survey's first run start, which picks
    up the promoted model, comes after both. Exceptions of the training thread are raised
    here; ``train_and_promote`` itself reports a refusal and keeps the shipped model.
    """
    from concurrent.futures import ThreadPoolExecutor

    from bluesky import plan_stubs as bps

    from pbi_bluesky.demos.loop import train_and_promote

    with ThreadPoolExecutor(1, thread_name_prefix="pbi-demo-train") as pool:
        training = pool.submit(train_and_promote, session, out, loop, epochs=epochs)
        try:
            session.RE(bps.mv(session.beamline.changer, 0))
        finally:
            training.result()


def _report(out, outcomes, summaries, events, model, runs, flagged_runs,
            report: LiveDemoReport | None = None) -> LiveDemoReport:
    """Compare the outcomes (one per slot) with the hidden truth.

    ``summaries``: the analysis runs' frame ledgers; ``events``: analysis events (with ``raw_uid``)
    to plot.
    """
    report = report or LiveDemoReport()
    truth_of = {s["slot"]: s for s in DEMO_TRAY}
    tp = fp = fn = 0
    for o in (o for o in outcomes if o.slot in truth_of):
        slot = truth_of[o.slot]
        truth = _truth(slot)
        defect = slot.get("kind", "normal") != "normal"
        confirmed = o.classification == "confirmed"
        tp += defect and confirmed
        fp += (not defect) and confirmed
        fn += defect and not confirmed
        if slot.get("transient"):
            report.transient_correct = o.classification == "transient"
        report.rows.append({
            "slot": o.slot, "sample": slot["sample"], "recipe": slot["composition"],
            "verdict": "ANOMALY" if o.flagged else ("ok" if o.flagged is not None else "-"),
            "score": o.score, "p_value": o.p_value,
            "hyperscore": _hyperscore(o.p_value),
            "top_attribution": o.top_attribution, "predicted": o.predicted_composition,
            "classification": o.classification, "truth": truth,
        })
    report.precision = tp / (tp + fp) if tp + fp else 0.0
    report.recall = tp / (tp + fn) if tp + fn else 0.0
    counts = {"received": 0, "scored": 0, "failed": 0, "shed": 0}
    for summary in summaries:
        counts["received"] += summary["frames"]
        for key in ("scored", "failed", "shed"):
            counts[key] += summary[key]
    report.frames = counts
    report.query = ("flagged_runs(runs)  # runs.search(Key('pbi_analysis') == True)"
                    ".search(Comparison('gt', 'stop.pbi_summary.flagged', 0))")
    report.flagged = flagged_runs(runs)
    report.png = str(_plot(out, events, model, truth_of, outcomes))
    return report


def _hyperscore(p_value: float | None) -> float | None:
    from pbi_bluesky.models import hyperscore

    return None if p_value is None else float(hyperscore(1.0 - p_value))


def _plot(out: Path, events: list[dict[str, Any]], model, truth_of, outcomes) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    survey = {o.raw_uid: o for o in outcomes}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    curves, labels, flags = [], [], []
    for event in events:
        o = survey.get(event["raw_uid"])
        if o is None or event["status"] != "scored":
            continue
        q, i = np.asarray(event["q"]), np.asarray(event["intensity"])
        flagged = bool(event["is_anomaly"])
        ax.loglog(q, np.clip(i, 1e-3, None), lw=1.8 if flagged else 0.8,
                  color="crimson" if flagged else "0.55", alpha=0.9,
                  label=f"slot {o.slot} {truth_of[o.slot]['sample']}" if flagged else None)
        curves.append((i, np.asarray(event["sigma"]), truth_of[o.slot]["composition"]))
        labels.append(f"{o.slot}")
        flags.append(flagged)
    ax.set_xlabel("q (1/Å)")
    ax.set_ylabel("I(q) (1/cm)")
    ax.set_title("live-reduced survey frames (red: flagged)")
    ax.legend(fontsize=7)
    if len(curves) > 2:
        inten = np.array([c[0] for c in curves])
        sig = np.array([c[1] for c in curves])
        idx = np.array([model.recipes.index(c[2]) for c in curves])
        xy = PCA(n_components=2).fit_transform(model._embed(inten, sig, idx))
        for (x, y), lab, flag, c in zip(xy, labels, flags, curves, strict=True):
            ax2.scatter(x, y, c="crimson" if flag else "tab:blue", s=40)
            ax2.annotate(f"{lab} ({c[2]})", (x, y), fontsize=7)
        ax2.set_title("embedding map (PCA of 128-d embeddings; red: flagged)")
    fig.tight_layout()
    path = out / "demo_live.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_report(report: LiveDemoReport, *, review: bool = True) -> str:
    """Return the report as text; ``review``: end with the ``pbi review`` command."""
    head = (f"{'slot':>4} {'sample':12} {'recipe':6} {'verdict':8} {'score':>7} {'p':>7} "
            f"{'Hyper':>6} {'top attribution':20} {'looks like':10} {'decision':11} truth")
    lines = []
    if report.loop:
        lines += ["the loop, before the survey:", *(f"  {s}" for s in report.loop["steps"]),
                  ""]
    if report.model:
        v = report.model.get("registry_version")
        origin = report.model.get("origin")
        lines.append(f"survey scored by model {str(report.model.get('model_sha256'))[:12]} "
                     + (f"(registry v{v})" if v else "(the shipped model)"
                        if origin in (None, "shipped") else f"({origin})"))
    lines += [head, "-" * len(head)]

    def num(value: float | None, spec: str) -> str:
        return format(value, spec) if value is not None else "-"

    for r in report.rows:
        lines.append(
            f"{r['slot']:>4} {r['sample']:12} {r['recipe']:6} {r['verdict']:8} "
            f"{num(r['score'], '7.3f')} {num(r['p_value'], '7.4f')} "
            f"{num(r['hyperscore'], '6.1f')} {r['top_attribution'][:20]:20} "
            f"{r['predicted'][:10]:10} {r['classification']:11} {r['truth']}")
    f = report.frames
    lines += [
        "",
        f"frames: {f.get('received')} received = {f.get('scored')} scored + "
        f"{f.get('failed')} failed + {f.get('shed')} shed (empty-cell frames count as scored)",
        f"material defects (decision 'confirmed') vs hidden truth: precision "
        f"{report.precision:.2f}, recall {report.recall:.2f}; transient beam dump told "
        f"apart: {'yes' if report.transient_correct else 'NO'}",
        "",
        f"Tiled query: {report.query}",
    ]
    for r in report.flagged:
        lines.append(f"  raw run {r['raw_uid'][:8]}  slot {r['slot']}  {r['sample']}  "
                     f"{r['composition']}  verdict={r['verdict']}  "
                     f"max score={r['max_score']:.3g}  p={num(r.get('p_value'), '.3g')}  "
                     f"p_est~{num(r.get('p_estimate'), '.2g')}")
    lines.append(f"{len(report.flagged)} flagged analysis run(s) in the catalog (p: exact "
                 "conformal, floored at 1/(n+1) by the calibration size; p_est: estimated "
                 "from the calibration scores' fitted tail, to rank flags past that floor)")
    lines.append(f"\nwrote {report.png} ({report.seconds} s in all)")
    if review and (command := review_command(report.catalog)):
        lines.append(f"review and label the flags in a browser:\n  {command}")
    return "\n".join(lines)
