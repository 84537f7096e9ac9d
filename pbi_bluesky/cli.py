"""The ``pbi`` command line (typer): simulate, reduce, demo."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="pbi",
    help="PolyBlendInsight for Bluesky: SAXS simulation, reduction and anomaly detection.",
    no_args_is_help=True,
    add_completion=False,
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # keep other libraries' chatter out of a scientist's terminal
        for name in ("caproto", "tiled", "pyFAI", "silx", "sasmodels", "numexpr", "httpx",
                     "matplotlib", "bluesky", "ophyd", "fabio", "h5py", "sim_iocs"):
            logging.getLogger(name).setLevel(logging.WARNING)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _setup_logging(verbose)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Output folder for the dataset.")],
    normals: Annotated[int, typer.Option(help="Normal specimens per recipe.")] = 20,
    anomalies: Annotated[int, typer.Option(help="Anomalous specimens per anomaly kind.")] = 5,
    faults: Annotated[int, typer.Option(help="Frames per instrument fault (with --frames).")] = 0,
    frames: Annotated[bool, typer.Option(help="Render 2D CBF frames and reduce them.")] = False,
    kinds: Annotated[
        str | None, typer.Option(help="Comma-separated anomaly kinds (default: all).")
    ] = None,
    blend: Annotated[
        Path | None, typer.Option(help="YAML/JSON blend system (default: PS/PMMA).")
    ] = None,
    detector: Annotated[str, typer.Option(help="pyFAI detector name.")] = "Pilatus1M",
    distance: Annotated[float, typer.Option(help="Sample-detector distance, m.")] = 3.0,
    flux: Annotated[float, typer.Option(help="Incident flux, photons/s.")] = 1e12,
    exposure: Annotated[float, typer.Option(help="Exposure time, s.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed (datasets are reproducible).")] = 0,
) -> None:
    """Write a labelled simulated dataset: profiles (and frames), manifest.csv, PONI."""
    from pbi_bluesky.datasets import generate_dataset
    from pbi_bluesky.simulate import PS_PMMA, Instrument, load_blend_system, make_geometry

    system = load_blend_system(blend) if blend else PS_PMMA
    instrument = Instrument(
        geometry=make_geometry(detector, distance), flux_ph_per_s=flux, exposure_s=exposure
    )
    manifest = generate_dataset(
        out,
        system=system,
        instrument=instrument,
        n_normal_per_recipe=normals,
        n_per_anomaly_kind=anomalies,
        kinds=tuple(k.strip() for k in kinds.split(",")) if kinds else None,
        n_per_fault=faults,
        frames=frames,
        seed=seed,
    )
    typer.echo(str(manifest))


@app.command()
def reduce(
    frames: Annotated[list[Path], typer.Argument(help="Image files (TIFF, EDF, CBF, HDF5).")],
    poni: Annotated[Path, typer.Option(help="pyFAI PONI geometry file.")],
    out: Annotated[Path, typer.Option(help="Output folder for profiles.")],
    mask: Annotated[Path | None, typer.Option(help="Mask image (non-zero = masked).")] = None,
    dark: Annotated[Path | None, typer.Option(help="Dark image.")] = None,
    flat: Annotated[Path | None, typer.Option(help="Flat-field image.")] = None,
    background: Annotated[Path | None, typer.Option(help="Empty-cell frame.")] = None,
    background_monitor: Annotated[float, typer.Option(help="Empty-cell monitor.")] = 1.0,
    background_transmission: Annotated[
        float, typer.Option(help="Empty-cell transmission.")
    ] = 1.0,
    monitor: Annotated[float, typer.Option(help="Monitor (I0) of every frame.")] = 1.0,
    transmission: Annotated[float, typer.Option(help="Sample transmission.")] = 1.0,
    thickness: Annotated[float | None, typer.Option(help="Sample thickness, cm.")] = None,
    npt: Annotated[int, typer.Option(help="Number of q bins.")] = 500,
    qmin: Annotated[float | None, typer.Option(help="Lowest q, 1/A.")] = None,
    qmax: Annotated[float | None, typer.Option(help="Highest q, 1/A.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="dat (3-column) or h5 (NXcanSAS).")] = "dat",
) -> None:
    """Reduce 2D frames to 1D I(q) profiles on one fixed q grid."""
    from pbi_bluesky.reduction import Reducer, ReductionError, write_ascii, write_nxcansas

    if fmt not in ("dat", "h5"):
        raise typer.BadParameter("--format must be 'dat' or 'h5'")
    q_range = (qmin, qmax) if qmin is not None and qmax is not None else None
    try:
        reducer = Reducer(poni, npt=npt, q_range_inv_angstrom=q_range, mask=mask, dark=dark,
                          flat=flat)
    except (ReductionError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for frame in frames:
        try:
            profile = reducer.reduce(
                frame, monitor=monitor, transmission=transmission, thickness_cm=thickness,
                background=background, background_monitor=background_monitor,
                background_transmission=background_transmission,
                metadata={"source": str(frame)},
            )
        except (ReductionError, OSError) as exc:
            failed += 1
            typer.echo(f"error: {frame}: {exc}", err=True)
            continue
        target = out / f"{frame.stem}.{fmt}"
        (write_ascii if fmt == "dat" else write_nxcansas)(profile, target)
        typer.echo(str(target))
    if failed:
        raise typer.Exit(1)


def _load_manifest_profiles(manifest: Path, poni: Path | None, mask: Path | None,
                            dark: Path | None):
    from pbi_bluesky.datasets import load_profiles, read_manifest

    rows = read_manifest(manifest)
    return rows, load_profiles(rows, poni=poni, mask=mask, dark=dark)


@app.command()
def train(
    manifest: Annotated[Path, typer.Option(help="CSV with columns path, composition.")],
    out: Annotated[Path, typer.Option(help="Output model bundle folder.")],
    poni: Annotated[Path | None, typer.Option(help="PONI: manifest paths are 2D frames.")] = None,
    mask: Annotated[Path | None, typer.Option(help="Mask image for frames.")] = None,
    dark: Annotated[Path | None, typer.Option(help="Dark image for frames.")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Training epochs (default: 80 for pbi, 30 for paper).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    alpha: Annotated[float, typer.Option(help="False-positive rate of the verdict.")] = 0.01,
    margin: Annotated[float, typer.Option(help="Triplet-loss margin.")] = 0.3,
    mining: Annotated[str, typer.Option(help="hard or semi-hard.")] = "semi-hard",
    detector_name: Annotated[str, typer.Option(
        "--detector", help="pbi (default) or paper (the seed paper's pipeline, literally)."
    )] = "pbi",
) -> None:
    """Train a detector on normal profiles (every manifest row is a normal sample)."""
    from dataclasses import replace

    import numpy as np
    import torch

    from pbi_bluesky.models import AnomalyDetector, PaperPipeline, save_bundle
    from pbi_bluesky.models.bundle import sha256_file, training_data_hash

    torch.manual_seed(seed)
    rows, loaded = _load_manifest_profiles(manifest, poni, mask, dark)
    if "anomaly" in rows[0]:
        keep = [i for i, r in enumerate(rows) if r.get("anomaly", "0") in ("0", "", "False")]
        if len(keep) < len(rows):
            typer.echo(f"note: using the {len(keep)} rows with anomaly=0 of {len(rows)}", err=True)
        rows, loaded = [rows[i] for i in keep], [loaded[i] for i in keep]
    bad = [(r["path"], p) for r, p in zip(rows, loaded, strict=True) if isinstance(p, Exception)]
    for path, exc in bad:
        typer.echo(f"error: {path}: {exc}", err=True)
    if bad:
        typer.echo(f"error: {len(bad)} training file(s) could not be read", err=True)
        raise typer.Exit(2)
    recipes = [r["composition"] for r in rows]
    kinds = {"pbi": AnomalyDetector, "paper": PaperPipeline}
    if detector_name not in kinds:
        typer.echo(f"error: --detector must be one of {', '.join(kinds)}", err=True)
        raise typer.Exit(2)
    kind = kinds[detector_name]
    cfg = replace(kind.default_training(), seed=seed, alpha=alpha, margin=margin,
                  mining=mining, **({} if epochs is None else {"epochs": epochs}))
    detector = kind(training=cfg)
    try:
        detector.fit(loaded, recipes)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    intensity, sigma = detector.resample(loaded)
    path = save_bundle(
        detector, out, training_data_sha256=training_data_hash(intensity, sigma, recipes),
        extra={"training_manifest": str(manifest), "manifest_sha256": sha256_file(manifest)},
    )
    typer.echo(f"wrote {path} (recipes {detector.recipes}, threshold "
               f"{detector.threshold:.4g}, train {detector.metrics['train_seconds']} s, "
               f"{len(np.asarray(detector.calibration_scores))} calibration normals)")


def _open_model(model: Path | None):
    from pbi_bluesky.models import BundleError, load_bundle
    from pbi_bluesky.models.bundle import load_default_model

    try:
        return load_bundle(model) if model else load_default_model()
    except BundleError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def score(
    files: Annotated[list[Path] | None, typer.Argument(help="Profiles or frames.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="CSV with path, composition.")] = None,
    model: Annotated[Path | None, typer.Option(help="Model bundle (default: shipped).")] = None,
    poni: Annotated[Path | None, typer.Option(help="PONI: inputs are 2D frames.")] = None,
    mask: Annotated[Path | None, typer.Option(help="Mask image for frames.")] = None,
    dark: Annotated[Path | None, typer.Option(help="Dark image for frames.")] = None,
    expected: Annotated[str | None, typer.Option(help="Expected recipe of FILES.")] = None,
    fdr: Annotated[bool, typer.Option(help="Benjamini-Hochberg over the batch.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Score profiles: one JSON line each (score, threshold, verdict, p-value, ...)."""
    from pbi_bluesky.datasets import load_profiles

    if bool(files) == bool(manifest):
        raise typer.BadParameter("give FILES or --manifest (one of them)")
    detector = _open_model(model)
    if manifest:
        rows, loaded = _load_manifest_profiles(manifest, poni, mask, dark)
        exp = [r.get("composition") or expected for r in rows]
    else:
        rows = [{"path": str(f)} for f in files or []]
        loaded = load_profiles(rows, poni=poni, mask=mask, dark=dark)
        exp = [expected] * len(rows)
    good = [i for i, p in enumerate(loaded) if not isinstance(p, Exception)]
    results: dict[int, dict] = {}
    for i, p in enumerate(loaded):
        if isinstance(p, Exception):
            results[i] = {"path": rows[i]["path"], "error": str(p)}
    scorable = []
    for i in good:
        try:
            detector.grid.resample(loaded[i])
            if exp[i] is not None and exp[i] not in detector.recipes:
                raise ValueError(f"expected recipe {exp[i]!r} unknown to the model "
                                 f"({detector.recipes})")
            scorable.append(i)
        except ValueError as exc:
            results[i] = {"path": rows[i]["path"], "error": str(exc)}
    if scorable:
        verdicts = detector.score([loaded[i] for i in scorable], [exp[i] for i in scorable],
                                  fdr=fdr)
        for i, v in zip(scorable, verdicts, strict=True):
            record = {"path": rows[i]["path"], **v.as_dict()}
            details = record.pop("details")
            record["features"] = details.get("features", {})
            record["attributions"] = details.get("attributions", {})
            results[i] = record
    for i in range(len(rows)):
        r = results[i]
        if as_json:
            typer.echo(json.dumps(r))
        elif "error" in r:
            typer.echo(f"{r['path']}: ERROR {r['error']}")
        else:
            top = next(iter(r["attributions"]), "")
            verdict = "ANOMALY" if r["is_anomaly"] else "ok"
            typer.echo(f"{r['path']}: {verdict} score={r['score']:.4g} p={r['p_value']:.3g} "
                       f"HyperScore={r['hyperscore']:.1f} predicted={r['predicted_composition']}"
                       f" expected={r['expected_composition']} {top}")
    if any("error" in r for r in results.values()):
        raise typer.Exit(1)


@app.command()
def evaluate(
    manifest: Annotated[Path, typer.Option(help="CSV with path, composition, anomaly, kind.")],
    model: Annotated[Path | None, typer.Option(help="Use this bundle for the default.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for PNGs and metrics.json.")] = Path(
        "evaluation"),
    poni: Annotated[Path | None, typer.Option(help="PONI: manifest paths are frames.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs of the default.")] = 80,
    alpha: Annotated[float, typer.Option(help="False-positive rate of verdicts.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Split and training seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
) -> None:
    """Compare the default detector, the paper's pipeline and baselines on one split."""
    import numpy as np

    from pbi_bluesky.models import QGrid, TrainingConfig
    from pbi_bluesky.models.evaluate import evaluate_arrays, format_report, plot_report

    rows, loaded = _load_manifest_profiles(manifest, poni, None, None)
    if "anomaly" not in rows[0]:
        raise typer.BadParameter("the manifest needs an 'anomaly' column (0/1)")
    detector = _open_model(model) if model else None
    grid = detector.grid if detector else QGrid()
    keep = [i for i, p in enumerate(loaded) if not isinstance(p, Exception)]
    for i in set(range(len(rows))) - set(keep):
        typer.echo(f"skipped {rows[i]['path']}: {loaded[i]}", err=True)
    pairs = [grid.resample(loaded[i]) for i in keep]
    intensity = np.array([a for a, _ in pairs])
    sigma = np.array([b for _, b in pairs])
    result = evaluate_arrays(
        intensity, sigma, [rows[i]["composition"] for i in keep],
        np.array([int(float(rows[i]["anomaly"])) for i in keep]),
        np.array([rows[i].get("kind") or ("anomaly" if rows[i]["anomaly"] == "1" else "normal")
                  for i in keep]),
        detector=detector, training=TrainingConfig(epochs=epochs, alpha=alpha, seed=seed),
        alpha=alpha, seed=seed, progress=not as_json,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=1))
    paths = plot_report(result, out)
    if as_json:
        typer.echo(json.dumps(result.metrics))
    else:
        typer.echo(format_report(result))
        typer.echo(f"wrote {out / 'metrics.json'}, " + ", ".join(map(str, paths)))


@app.command()
def flagged(
    tiled: Annotated[str | None, typer.Option(help="Tiled URI (default: PBI_TILED_URI or "
                                               "the embedded catalog).")] = None,
    api_key: Annotated[str | None, typer.Option(help="Tiled API key.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Embedded catalog folder.")] = None,
    composition: Annotated[str | None, typer.Option(help="Only this recipe.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, e.g. 2026-11-24T08:00.")] = None,
    min_score: Annotated[float | None, typer.Option(help="Minimum max score.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List the raw runs whose live analysis flagged them."""
    from pbi_bluesky.store import flagged_runs, open_runs

    try:
        runs = open_runs(tiled, api_key=api_key, data_dir=data_dir)
    except Exception as exc:  # noqa: BLE001 - report any connection problem plainly
        typer.echo(f"error: cannot open the Tiled catalog: {exc}", err=True)
        raise typer.Exit(2) from exc
    rows = flagged_runs(runs, composition=composition, since=since, min_score=min_score)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        typer.echo(f"{r['raw_uid']}  slot={r['slot']} sample={r['sample']} "
                   f"recipe={r['composition']} verdict={r['verdict']} flagged={r['flagged']}/"
                   f"{r['frames']} max_score={r['max_score']:.3g}")
    typer.echo(f"{len(rows)} flagged run(s)")


@app.command("replay-spool")
def replay_spool(
    spool: Annotated[Path, typer.Argument(help="Spool folder (pending/ and done/ inside).")],
    tiled: Annotated[str | None, typer.Option(help="Tiled URI (default: PBI_TILED_URI or "
                                               "the embedded catalog).")] = None,
    api_key: Annotated[str | None, typer.Option(help="Tiled API key.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Embedded catalog folder.")] = None,
) -> None:
    """Write spooled runs that did not reach Tiled (it was down) into the catalog."""
    from bluesky_tiled_plugins import TiledWriter

    from pbi_bluesky.store import SpoolSink, open_runs

    try:
        runs = open_runs(tiled, api_key=api_key, data_dir=data_dir)
    except Exception as exc:  # noqa: BLE001
        typer.echo(f"error: cannot open the Tiled catalog: {exc}", err=True)
        raise typer.Exit(2) from exc

    def delete_partial(uid: str) -> None:
        if uid in runs:
            runs[uid].delete(recursive=True, external_only=False)

    sink = SpoolSink(spool, lambda: TiledWriter(runs), delete_partial=delete_partial)
    outcomes = sink.replay()
    for uid, outcome in outcomes.items():
        typer.echo(f"{uid}: {outcome}")
    typer.echo(f"{sum(o == 'written' for o in outcomes.values())} of {len(outcomes)} "
               "pending run(s) written")
    if any(o.startswith("failed") for o in outcomes.values()):
        raise typer.Exit(1)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("demo_output"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    offline: Annotated[bool, typer.Option(help="No beamline: simulate, reduce, plot.")] = False,
    exposure: Annotated[float, typer.Option(help="Survey exposure, s (live demo).")] = 0.2,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Live demo: sim IOCs + embedded Tiled + a RunEngine survey with anomalies flagged.

    Starts a caproto IOC (Pilatus 1M, sample changer, beam, faults) with a 14-sample tray,
    runs survey_and_rescan with the live scorer and the shipped model, prints verdicts vs
    the hidden truth and the Tiled query of flagged runs, writes a PNG, shuts down.
    """
    if offline:
        from pbi_bluesky.demo import format_table, run_offline_demo

        rows = run_offline_demo(out, seed=seed, progress=not as_json)
        if as_json:
            typer.echo(json.dumps([r.as_dict() for r in rows]))
            return
        typer.echo(format_table(rows))
        typer.echo(f"\nwrote {out / 'demo_curves.png'}, {out / 'demo_summary.csv'}")
        return
    from pbi_bluesky.beamline_demo import format_report, run_live_demo

    report = run_live_demo(out, exposure_s=exposure, seed=seed)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), default=str))
    else:
        typer.echo(format_report(report))
    if not report.rows or report.frames.get("received") != (
        report.frames.get("scored", 0) + report.frames.get("failed", 0)
        + report.frames.get("shed", 0)
    ):
        raise typer.Exit(1)


@app.command()
def iocs(
    prefix: Annotated[str, typer.Option(help="PV prefix.")] = "PBI:",
    tray: Annotated[Path | None, typer.Option(help="Tray YAML/JSON (default: built in).")] = None,
    detector: Annotated[str, typer.Option(help="Pilatus300k or Pilatus1M.")] = "Pilatus1M",
    seed: Annotated[int | None, typer.Option(help="Random seed of the specimens.")] = None,
    list_pvs: Annotated[bool, typer.Option("--list-pvs", help="Print the PVs and exit.")] = False,
) -> None:
    """Run the simulated SAXS beamline IOC in the foreground (Ctrl-C stops it)."""
    from sim_iocs.saxs_beamline import main as ioc_main

    argv = ["--prefix", prefix, "--detector", detector]
    if tray:
        argv += ["--tray", str(tray)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if list_pvs:
        argv.append("--print-pvs")
    ioc_main(argv)


def main() -> None:
    """Entry point of the ``pbi`` console script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
