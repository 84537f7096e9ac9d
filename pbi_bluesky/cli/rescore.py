"""``pbi rescore``: re-score archived raw runs with a new model on a Dask cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pbi_bluesky.cli.app import ApiKeyOpt, catalog_app, command, require_extra


@command(catalog_app, "rescore", old="rescore")
def rescore(
    model: Annotated[Path | None, typer.Option(
        help="The new model bundle (with a registry: the fallback when nothing is "
             "promoted).")] = None,
    registry: Annotated[Path | None, typer.Option(
        help="Model registry: re-score with its current model (default: scorer.registry "
             "of the beamline file, when one is given).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="beamline.yaml (default: $PBI_BEAMLINE_CONFIG): its registry and model.")]
    = None,
    since: Annotated[str | None, typer.Option(help="Runs started at or after (ISO time).")]
    = None,
    until: Annotated[str | None, typer.Option(help="Runs started at or before (ISO time).")]
    = None,
    query: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE equality on start-document keys (repeat), e.g. "
             "composition=50:50.")] = None,
    tiled: Annotated[str | None, typer.Option(
        help="Tiled URI (default: PBI_TILED_URI or the embedded catalog).")] = None,
    api_key: ApiKeyOpt = None,
    scheduler: Annotated[str | None, typer.Option(
        help="Dask scheduler address (tcp://host:8786); default: a LocalCluster.")] = None,
    workers: Annotated[int, typer.Option(help="LocalCluster worker processes.")] = 2,
    mask: Annotated[Path | None, typer.Option(help="Mask image.")] = None,
    dark: Annotated[Path | None, typer.Option(help="Dark image.")] = None,
    poni: Annotated[Path | None, typer.Option(
        help="PONI file (default: each run's start document).")] = None,
    npt: Annotated[int, typer.Option(help="q bins of the reduction.")] = 400,
    data_root: Annotated[list[Path] | None, typer.Option(help="Readable frame folders.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON summary.")] = False,
) -> None:
    """Re-score raw runs from Tiled with MODEL (or the registry's current model) on Dask.

    New analysis runs linked to the raw runs and tagged with the model's sha256 (and registry
    version). Runs this model has already re-scored are skipped, so an interrupted
    re-scoring is resumed by running it again. The registry's current model is read once,
    when the job starts.
    """
    from pbi_bluesky.cli.registry import _settings

    require_extra("dask", "pbi catalog rescore")
    cfg = _settings(config) if model is None or registry is None else None
    if registry is None and cfg is not None and cfg.scorer.registry:
        registry = Path(cfg.scorer.registry)
    if model is None and cfg is not None and cfg.scorer.model:
        model = Path(cfg.scorer.model)
    if model is None and registry is None:
        typer.echo("error: give --model, or a registry (--registry, or a beamline file "
                   "with scorer.registry)", err=True)
        raise typer.Exit(2)
    from distributed import Client, LocalCluster

    from pbi_bluesky.rescore import RescoreJob
    from pbi_bluesky.rescore import rescore as run_rescore

    scorer = {"npt": npt}
    for key, value in (("mask", mask), ("dark", dark), ("poni", poni)):
        if value is not None:
            scorer[key] = str(value)
    if data_root:
        scorer["data_roots"] = [str(p) for p in data_root]
    job = RescoreJob(None if model is None else str(model), tiled, api_key, scorer,
                     registry=None if registry is None else str(registry))
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1,
                               processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0")
        client = Client(cluster)
    try:
        summary = run_rescore(job, client, since=since, until=until,
                              query=tuple(query or ()), progress=not as_json)
    except Exception as exc:  # noqa: BLE001 - a bad model, catalog or query, said plainly
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        version = summary["model_registry_version"]
        if registry is not None:
            typer.echo(f"registry {registry}: " + (f"current model v{version}" if version
                       else f"nothing promoted, the fallback {model or 'shipped model'}"))
        typer.echo(f"model {summary['model_sha256'][:12]}: {summary['selected']} run(s) "
                   f"selected, {summary['skipped']} already re-scored, "
                   f"{len(summary['rescored'])} re-scored, {len(summary['failed'])} failed")
        for uid, reason in summary["failed"].items():
            typer.echo(f"  {uid}: {reason}", err=True)
    if summary["failed"]:
        raise typer.Exit(1)
