"""``pbi model train``, ``pbi model score``: model bundles and verdicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pbi_bluesky.cli.app import ApiKeyOpt, command, model_app


def _load_manifest_profiles(manifest: Path, poni: Path | None, mask: Path | None,
                            dark: Path | None):
    from pbi_bluesky.training.datasets import load_profiles, read_manifest

    rows = read_manifest(manifest)
    return rows, load_profiles(rows, poni=poni, mask=mask, dark=dark)


def _tiled_scorer(config: Path | None, poni: Path | None, mask: Path | None,
                  dark: Path | None, npt: int | None, model: Path | None = None,
                  reduce_only: bool = False):
    """Build a FrameScorer with the beamline file's reduction settings (or the options')."""
    import numpy as np

    from pbi_bluesky.scoring.engine import FrameScorer, settings_kwargs

    kwargs = settings_kwargs(config) if config else {}
    for name, value in (("poni", poni), ("mask", mask), ("dark", dark)):
        if value is not None:  # .npy images are read here; other formats by the scorer
            kwargs[name] = (str(value) if name == "poni" or not str(value).endswith(".npy")
                            else np.load(value))
    if npt is not None:
        kwargs["npt"] = npt
    if reduce_only:
        kwargs.pop("model", None)
        return FrameScorer(reduce_only=True, **kwargs)
    if model is not None:
        kwargs["model"] = model
    return FrameScorer(**kwargs)


def _open_catalog(uri: str, api_key: str | None):
    from pbi_bluesky.store import Catalog

    try:
        return Catalog(uri, api_key=api_key).runs
    except Exception as exc:  # noqa: BLE001 - a clear line instead of a traceback
        typer.echo(f"error: cannot open the catalog at {uri}: {type(exc).__name__}: {exc}",
                   err=True)
        raise typer.Exit(2) from exc


TILED_HELP = "Train on raw runs in this Tiled catalog (instead of a manifest)."
SinceOpt = Annotated[str | None, typer.Option(
    help="Only runs started at or after this time (ISO or epoch s).")]
UntilOpt = Annotated[str | None, typer.Option(
    help="Only runs started at or before this time (ISO or epoch s).")]
QUERY_HELP = ("KEY=VALUE on the runs' start documents (repeatable; the value is read as "
              "JSON where it parses).")


@command(model_app, "train", old="train")
def train(
    out: Annotated[Path, typer.Option(help="Output model bundle folder.")],
    manifest: Annotated[Path | None, typer.Option(
        help="CSV with columns path, composition.")] = None,
    tiled: Annotated[str | None, typer.Option("--tiled", help=TILED_HELP)] = None,
    query: Annotated[list[str] | None, typer.Option(help=QUERY_HELP)] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    api_key: ApiKeyOpt = None,
    config: Annotated[Path | None, typer.Option(
        help="beamline.yaml: reduction settings (mask, dark, q bins, keys) for --tiled.")
    ] = None,
    npt: Annotated[int | None, typer.Option(
        help="q bins of the reduction for --tiled (default: the beamline file's, else 400).")
    ] = None,
    poni: Annotated[Path | None, typer.Option(help="PONI: manifest paths are 2D frames.")] = None,
    mask: Annotated[Path | None, typer.Option(help="Mask image for frames.")] = None,
    dark: Annotated[Path | None, typer.Option(help="Dark image for frames.")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Training epochs (default: 80 for pbi, 30 for paper).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    alpha: Annotated[float | None, typer.Option(
        help="False-positive rate of the verdict (default: 0.01 where the normals reach it, "
             "else the smallest of 0.02, 0.05, 0.1 they reach; an alpha given here that "
             "they cannot reach is an error).")] = None,
    calibration: Annotated[str, typer.Option(
        help="auto (default), split or cross (cross-conformal: every normal calibrates, "
             "K models).")] = "auto",
    folds: Annotated[int, typer.Option(help="K of cross-conformal calibration.")] = 5,
    qmin: Annotated[float | None, typer.Option(
        help="Lowest q of the model grid, 1/A (default: 0.008, or the lowest q every "
             "training profile covers).")] = None,
    qmax: Annotated[float | None, typer.Option(
        help="Highest q of the model grid, 1/A (default: 0.19, or the highest q every "
             "training profile covers).")] = None,
    margin: Annotated[float, typer.Option(help="Triplet-loss margin.")] = 0.3,
    mining: Annotated[str, typer.Option(help="hard or semi-hard.")] = "semi-hard",
    detector_name: Annotated[str, typer.Option(
        "--detector", help="pbi (default) or paper (the seed paper's pipeline, literally)."
    )] = "pbi",
    nproc: Annotated[int, typer.Option(
        help="Train the network data-parallel in N local processes (torch "
             "DistributedDataParallel: gloo on CPU, nccl with a GPU per process).",
        min=1)] = 1,
) -> None:
    """Train a detector on normal profiles.

    Every manifest row, or every frame of the raw runs selected in Tiled (--tiled, --query,
    --since, --until).
    """
    from pbi_bluesky.models.bundle import sha256_file

    if (manifest is None) == (tiled is None):
        raise typer.BadParameter("give --manifest or --tiled (one of them)")
    fixed_grid = None
    if tiled is not None:
        from pbi_bluesky.models import QGrid
        from pbi_bluesky.training.tiled import collect_normals

        if qmin is not None or qmax is not None:
            fixed_grid = QGrid(qmin if qmin is not None else 0.008,
                               qmax if qmax is not None else 0.19)
        runs = _open_catalog(tiled, api_key)
        scorer = _tiled_scorer(config, poni, mask, dark, npt, reduce_only=True)
        normals = collect_normals(runs, scorer, query=tuple(query or ()), since=since,
                                  until=until, grid=fixed_grid, uri=tiled)
        summary = normals.summary()
        for r in normals.refused:
            typer.echo(f"refused run {r['uid']} ({r['sample']}): {r['reason']}", err=True)
        typer.echo(f"runs: {summary['selected']} selected, {summary['used']} used, "
                   f"{summary['refused']} refused, {summary['empty_cells']} empty cells; "
                   f"{summary['frames']} normal frames "
                   + ", ".join(f"{k} {v}" for k, v in summary["per_recipe"].items()))
        reads = summary["reads"]
        typer.echo(f"frames read: {reads['from_files']} from their files under the data "
                   f"roots, {reads['through_tiled']} through Tiled's array endpoint"
                   + "".join(f"; {n} stream(s): {why}" for why, n in
                             reads["why_tiled"].items()))
        if not normals.profiles:
            typer.echo("error: no usable normal frames in the selection", err=True)
            raise typer.Exit(2)
        loaded, recipes = normals.profiles, normals.recipes
        extra = {"training_source": normals.selection, "training_runs": normals.run_uids,
                 "training_summary": summary}
        refused, source = normals.refused, normals.selection
    else:
        rows, loaded = _load_manifest_profiles(manifest, poni, mask, dark)
        if "anomaly" in rows[0]:
            keep = [i for i, r in enumerate(rows)
                    if r.get("anomaly", "0") in ("0", "", "False")]
            if len(keep) < len(rows):
                typer.echo(f"note: using the {len(keep)} rows with anomaly=0 of {len(rows)}",
                           err=True)
            rows, loaded = [rows[i] for i in keep], [loaded[i] for i in keep]
        bad = [(r["path"], p) for r, p in zip(rows, loaded, strict=True)
               if isinstance(p, Exception)]
        for path, exc in bad:
            typer.echo(f"error: {path}: {exc}", err=True)
        if bad:
            typer.echo(f"error: {len(bad)} training file(s) could not be read", err=True)
            raise typer.Exit(2)
        recipes = [r["composition"] for r in rows]
        extra = {"training_manifest": str(manifest), "manifest_sha256": sha256_file(manifest)}
        refused, source = [], {"manifest": str(manifest)}
    _fit_and_save(loaded, recipes, out, extra=extra, refused=refused, source=source,
                  epochs=epochs, seed=seed, alpha=alpha, calibration=calibration,
                  folds=folds, qmin=qmin, qmax=qmax, margin=margin,
                  mining=mining, detector_name=detector_name, nproc=nproc)


def _fit_and_save(loaded, recipes, out: Path, *, extra: dict, refused: list, source: dict,
                  epochs, seed, alpha,
                  calibration, folds, qmin, qmax, margin, mining, detector_name,
                  nproc) -> None:
    from dataclasses import replace

    import torch

    from pbi_bluesky.models import (
        AnomalyDetector,
        CoverageError,
        PaperPipeline,
        QGrid,
        save_bundle,
    )
    from pbi_bluesky.models.bundle import training_data_hash

    torch.manual_seed(seed)
    kinds = {"pbi": AnomalyDetector, "paper": PaperPipeline}
    if detector_name not in kinds:
        typer.echo(f"error: --detector must be one of {', '.join(kinds)}", err=True)
        raise typer.Exit(2)
    kind = kinds[detector_name]
    if nproc > 1 and detector_name != "pbi":
        typer.echo("error: --nproc is for --detector pbi (the paper's pipeline trains in one "
                   "process)", err=True)
        raise typer.Exit(2)
    try:
        cfg = replace(kind.default_training(), seed=seed, alpha=alpha, margin=margin,
                      mining=mining, calibration=calibration, folds=folds,
                      **({} if epochs is None else {"epochs": epochs}))
        preferred = (qmin if qmin is not None else 0.008, qmax if qmax is not None else 0.19)
        if qmin is not None or qmax is not None:
            grid = QGrid(*preferred)  # asked for: every training profile must cover it
        else:
            grid = QGrid.for_profiles(loaded, preferred=preferred)
        if qmin is None and qmax is None and (grid.q_min, grid.q_max) != (0.008, 0.19):
            typer.echo(f"note: the training profiles do not all cover q = 0.008..0.19 1/A; "
                       f"the model grid is q = {grid.q_min:.4g}..{grid.q_max:.4g} 1/A "
                       "(every profile scored later must cover it)", err=True)
        detector = kind(grid, training=cfg)
        detector.fit(loaded, recipes, **({"nproc": nproc} if nproc > 1 else {}))
    except CoverageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except RuntimeError as exc:  # a data-parallel training process failed
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    intensity, sigma = detector.resample(loaded)
    path = save_bundle(
        detector, out, training_data_sha256=training_data_hash(intensity, sigma, recipes),
        extra=extra,
    )
    typer.echo(f"wrote {path} (recipes {detector.recipes}, train "
               f"{detector.metrics['train_seconds']} s)")
    typer.echo(describe_calibration(detector))
    from pbi_bluesky.training.report import write_report

    try:
        write_report(out, detector, loaded, recipes, refused=refused, source=source)
        typer.echo(f"training report: {out / 'report.html'}")
    except Exception as exc:  # noqa: BLE001 - the bundle is written and usable
        typer.echo(f"warning: the training report could not be written: "
                   f"{type(exc).__name__}: {exc}", err=True)


def describe_calibration(detector) -> str:
    """One paragraph: calibration method, sizes, smallest reachable p, alpha, threshold."""
    c = detector.calibration_summary()
    method = ("cross-conformal, " + f"{c['folds']} models each trained without one fold"
              if c["method"] == "cross" else "split conformal (one model)")
    scope = "per recipe (Mondrian)" if c["mondrian"] else "pooled over recipes"
    per = ", ".join(f"{k} {v}" for k, v in c["n_calibration_per_recipe"].items())
    alpha = f"alpha {c['alpha']:g}" + ("" if c["alpha_source"] == "given"
                                       else f" ({c['alpha_source']})")
    lines = [f"calibration: {method}, {scope}; {c['n_calibration']} calibration normals "
             f"({per}); smallest reachable p {c['smallest_p']:.4g}; {alpha}; threshold "
             f"{c['threshold']:.4g}"]
    levels, marginal = c.get("flag_level", {}), c.get("flag_level_marginal", {})
    if any(v < marginal.get(k, v) - 1e-12 for k, v in levels.items()):
        lv = ", ".join(f"{k} p <= {v:.4g} (P(FPR > alpha + {c['fpr_tolerance']:g}) = "
                       f"{c['fpr_risk'][k]:.2g})" for k, v in levels.items())
        lines.append(f"flagged at (lowered so that this model's rate stays near alpha, "
                     f"training-conditional): {lv}")
    if c.get("threshold_per_recipe"):
        lines.append("thresholds per recipe: " + ", ".join(
            f"{k} {v:.4g}" for k, v in c["threshold_per_recipe"].items()))
    lines.append(f"validity: {c['validity']}")
    from pbi_bluesky.models.sanity import gross_error_misses

    misses = gross_error_misses(detector)
    lines.append("gross errors (each recipe's mean normal curve x3 and x1/3): " + (
        "all flagged" if not misses else
        f"WARNING: {len(misses)} not flagged ({'; '.join(misses)}); `pbi model promote` "
        "refuses this model: train on more normals per recipe"))
    return "\n".join(lines)


def _open_model(model: Path | None, *, for_scoring: bool = True):
    """Load a bundle; for scoring, one that can never flag is refused (exit 2)."""
    from pbi_bluesky.models import BundleError, load_bundle
    from pbi_bluesky.models.bundle import load_default_model

    try:
        if model:
            return load_bundle(model, for_scoring=for_scoring)
        return load_default_model(for_scoring=for_scoring)
    except BundleError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@command(model_app, "score", old="score")
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
    tiled: Annotated[str | None, typer.Option(
        "--tiled", help="Score every frame of raw runs in this Tiled catalog (writes "
                        "nothing).")] = None,
    query: Annotated[list[str] | None, typer.Option(help=QUERY_HELP)] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    api_key: ApiKeyOpt = None,
    config: Annotated[Path | None, typer.Option(
        help="beamline.yaml: reduction settings for --tiled.")] = None,
    npt: Annotated[int | None, typer.Option(help="q bins of the reduction for --tiled.")
                   ] = None,
) -> None:
    """Score profiles.

    One JSON line each (score, threshold, verdict, p-value, ...); with --tiled, one line per
    frame of the selected raw runs.
    """
    from pbi_bluesky.training.datasets import load_profiles

    if sum(map(bool, (files, manifest, tiled))) != 1:
        raise typer.BadParameter("give FILES, --manifest or --tiled (one of them)")
    if tiled is not None:
        _score_tiled(tiled, api_key, model, config, poni, mask, dark, npt,
                     tuple(query or ()), since, until, as_json)
        return
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


def _score_tiled(uri: str, api_key: str | None, model: Path | None, config: Path | None,
                 poni: Path | None, mask: Path | None, dark: Path | None, npt: int | None,
                 query: tuple[str, ...], since: str | None, until: str | None,
                 as_json: bool) -> None:
    from pbi_bluesky.models import BundleError
    from pbi_bluesky.training.tiled import score_selection

    runs = _open_catalog(uri, api_key)
    try:
        scorer = _tiled_scorer(config, poni, mask, dark, npt, model=model)
    except BundleError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    failed = 0
    for record in score_selection(runs, scorer, query=query, since=since, until=until):
        failed += "error" in record
        if as_json:
            typer.echo(json.dumps(record))
        elif "error" in record:
            typer.echo(f"{record['raw_uid']} #{record['seq_num']}: ERROR {record['error']}")
        elif record["status"] == "scored":
            verdict = "ANOMALY" if record["is_anomaly"] else "ok"
            typer.echo(f"{record['raw_uid']} #{record['seq_num']} {record['sample']}: "
                       f"{verdict} score={record['score']:.4g} p={record['p_value']:.3g}")
    if failed:
        raise typer.Exit(1)
