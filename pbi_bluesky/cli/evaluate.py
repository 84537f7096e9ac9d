"""``pbi model evaluate``: a bundle's verdict metrics on a labelled data set or on labels.

On a data set with ground truth (CSV), or with ``--labels`` on the runs people labelled in a
catalog: recall on confirmed defects and the rate still flagged among false alarms.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pbi_bluesky.cli.app import ApiKeyOpt, command, model_app
from pbi_bluesky.cli.model import _load_manifest_profiles, _open_model


@command(model_app, "evaluate", old="evaluate")
def evaluate(
    manifest: Annotated[Path | None, typer.Option(
        help="CSV with path, composition, anomaly, kind.")] = None,
    model: Annotated[Path | None, typer.Option(help="Use this bundle for the default.")] = None,
    labels: Annotated[bool, typer.Option(
        "--labels", help="Evaluate --model on the labelled runs of a catalog (--tiled or "
                         "--data-dir) instead of a manifest: recall on confirmed defects, "
                         "rate still flagged of false alarms.")] = False,
    tiled: Annotated[str | None, typer.Option(
        "--tiled", help="With --labels: Tiled URI (default: PBI_TILED_URI or the embedded "
                        "catalog).")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="With --labels: embedded catalog folder.")] = None,
    api_key: ApiKeyOpt = None,
    out: Annotated[Path, typer.Option(help="Folder for PNGs and metrics.json.")] = Path(
        "evaluation"),
    poni: Annotated[Path | None, typer.Option(help="PONI: manifest paths are frames.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs of the default.")] = 80,
    alpha: Annotated[float | None, typer.Option(
        help="False-positive rate of verdicts (default: as pbi train).")] = None,
    seed: Annotated[int, typer.Option(help="Split and training seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
) -> None:
    """Compare the default detector, the paper's pipeline and baselines on one split.

    With ``--labels``: score the frames of the catalog's labelled runs with ``--model`` (any
    candidate bundle) and report recall on the runs labelled confirmed defects and the
    share of runs labelled false alarms it still flags (a run counts as flagged when any
    of its frames is), overall and per recipe.
    """
    import numpy as np

    if labels:
        _evaluate_labels(model, tiled, api_key, data_dir, as_json)
        return
    if manifest is None:
        raise typer.BadParameter("give --manifest, or --labels with a catalog")

    from pbi_bluesky.models import QGrid, TrainingConfig
    from pbi_bluesky.models.evaluate import evaluate_arrays, format_report, plot_report

    rows, loaded = _load_manifest_profiles(manifest, poni, None, None)
    if "anomaly" not in rows[0]:
        raise typer.BadParameter("the manifest needs an 'anomaly' column (0/1)")
    detector = _open_model(model, for_scoring=False) if model else None
    if detector is not None and not detector.can_flag:
        typer.echo(f"warning: {model} can never flag a curve at its alpha {detector.alpha}; "
                   "its verdict metrics are all zero (its ranking is still evaluated)",
                   err=True)
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
        alpha=alpha if alpha is not None else (detector.alpha if detector else 0.01),
        seed=seed, progress=not as_json,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=1))
    paths = plot_report(result, out)
    if as_json:
        typer.echo(json.dumps(result.metrics))
    else:
        typer.echo(format_report(result))
        typer.echo(f"wrote {out / 'metrics.json'}, " + ", ".join(map(str, paths)))


def _evaluate_labels(model: Path | None, tiled: str | None, api_key: str | None,
                     data_dir: Path | None, as_json: bool) -> None:
    """``pbi model evaluate --labels``: the catalog's labelled runs as a test set."""
    from pbi_bluesky.models.recalibrate import label_report
    from pbi_bluesky.store import labelled_frames, open_runs

    if model is None:
        raise typer.BadParameter("--labels needs --model (the candidate bundle)")
    detector = _open_model(model, for_scoring=False)
    try:
        runs = open_runs(tiled, api_key=api_key, data_dir=data_dir, metadata_only=False,
                         must_exist=True)
        defects = labelled_frames(runs, "defect")
        alarms = labelled_frames(runs, "false-alarm")
    except Exception as exc:  # noqa: BLE001 - report any connection problem plainly
        typer.echo(f"error: cannot read the Tiled catalog: {type(exc).__name__}: {exc}",
                   err=True)
        raise typer.Exit(2) from exc
    if not defects and not alarms:
        typer.echo("error: no run in the catalog is labelled (`pbi catalog label RAW_UID "
                   "--defect | --false-alarm` labels one)", err=True)
        raise typer.Exit(1)
    report = {"model": str(model), **label_report(detector, defects, alarms)}
    if as_json:
        typer.echo(json.dumps(report))
        return

    def line(name: str, d: dict) -> str:
        dr, fa = d["defects"], d["false_alarms"]
        recall = "-" if dr["recall"] is None else f"{dr['recall']:.3g}"
        rate = "-" if fa["false_alarm_rate"] is None else f"{fa['false_alarm_rate']:.3g}"
        return (f"{name:>10} {dr['flagged']:>4}/{dr['runs']:<4} {recall:>6} "
                f"{fa['flagged']:>4}/{fa['runs']:<4} {rate:>6}")

    typer.echo(f"model {model}: labelled runs of the catalog (a run is flagged when any "
               "frame is)")
    typer.echo(f"{'recipe':>10} {'defects':>9} {'recall':>6} {'f.alarms':>9} {'still':>6}")
    for name, d in report["per_recipe"].items():
        typer.echo(line(name, d))
    typer.echo(line("all", report))
    for r in report["skipped"]:
        typer.echo(f"skipped {r['raw_uid']} ({r['label']}): {r['skipped']}", err=True)
