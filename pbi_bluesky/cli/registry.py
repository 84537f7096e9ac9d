"""``pbi model list | show | promote | rollback``: the beamline's model registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pbi_bluesky.cli.app import command, model_app

REGISTRY_HELP = "Registry folder (default: scorer.registry of the beamline file)."
CONFIG_HELP = "beamline.yaml (default: $PBI_BEAMLINE_CONFIG): its registry and q range."


def _settings(config: Path | None) -> Any:
    import os

    from pbi_bluesky.config import ConfigError, load_config
    from pbi_bluesky.config.beamline import ENV_VAR

    if config is None and not os.environ.get(ENV_VAR):
        return None
    try:
        return load_config(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _registry(registry: Path | None, config: Path | None):
    from pbi_bluesky.models.registry import ModelRegistry

    cfg = _settings(config)
    folder = registry or (cfg.scorer.registry if cfg is not None else None)
    if folder is None:
        typer.echo("error: no registry: give --registry or a beamline file with "
                   "scorer.registry (--config or $PBI_BEAMLINE_CONFIG)", err=True)
        raise typer.Exit(2)
    return ModelRegistry(folder), cfg


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2) from exc


def _row(v: Any, current: int | None) -> dict[str, Any]:
    info = v.info
    return {"version": v.number, "current": v.number == current,
            "model_sha256": v.model_sha256, "added_at": info.get("added_at"),
            "recipes": info.get("recipes"), "alpha": info.get("alpha"),
            "q_grid": info.get("q_grid"), "calibration": info.get("calibration"),
            "training_runs": len(info.get("training_runs") or []),
            "signed": info.get("signed"), "path": str(v.path)}


@command(model_app, "list")
def list_models(
    registry: Annotated[Path | None, typer.Option(help=REGISTRY_HELP)] = None,
    config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List the registered model versions; the current one is marked with *."""
    from pbi_bluesky.models.registry import RegistryError

    reg, _cfg = _registry(registry, config)
    try:
        versions, current = reg.versions(), reg.current()
    except RegistryError as exc:
        _fail(exc)
    number = current.number if current else None
    if not versions and not as_json:
        typer.echo(f"{reg.root}: no model registered; the shipped model serves")
    for v in versions:
        row = _row(v, number)
        if as_json:
            typer.echo(json.dumps(row))
        else:
            cal = row["calibration"] or {}
            typer.echo(f"{'*' if row['current'] else ' '} v{v.number}  {row['added_at']}  "
                       f"sha256 {v.model_sha256[:12]}  recipes {row['recipes']}  alpha "
                       f"{row['alpha']:g}  calibration {cal.get('method')} "
                       f"n={cal.get('n_calibration')}  {row['training_runs']} training runs")
    if versions and number is None and not as_json:
        typer.echo("(rolled back to nothing: the shipped model serves)")


@command(model_app, "show")
def show(
    version: Annotated[int | None, typer.Argument(help="Version (default: current).")] = None,
    registry: Annotated[Path | None, typer.Option(help=REGISTRY_HELP)] = None,
    config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
) -> None:
    """One version in full (JSON): metrics, calibration, training runs and selection."""
    from pbi_bluesky.models.registry import RegistryError

    reg, _cfg = _registry(registry, config)
    try:
        current = reg.current()
        v = reg.version(version) if version is not None else current
    except RegistryError as exc:
        _fail(exc)
    if v is None:
        typer.echo(f"{reg.root}: no model promoted; the shipped model serves")
        return
    typer.echo(json.dumps({**v.info, "current": current is not None
                           and v.number == current.number, "path": str(v.path)}, indent=1))


@command(model_app, "promote")
def promote(
    bundle: Annotated[str, typer.Argument(help="Bundle folder, or a registered version number.")],
    registry: Annotated[Path | None, typer.Option(help=REGISTRY_HELP)] = None,
    config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
    poni: Annotated[Path | None, typer.Option(
        help="Geometry whose q range the model must lie in (default: the beamline file's).")
    ] = None,
    mask: Annotated[Path | None, typer.Option(
        help="Mask of that geometry (default: the beamline file's).")] = None,
    npt: Annotated[int | None, typer.Option(help="q bins of that reduction.")] = None,
    note: Annotated[str, typer.Option(help="Why (kept in the registry's log).")] = "",
) -> None:
    """Make a bundle the beamline's current model.

    Running scorers take it at their next run start. Refused (the current model stays)
    if it does not load, cannot flag, or its q grid is not inside the beamline's q range.
    """
    from pbi_bluesky.models.registry import RegistryError, beamline_q_range

    reg, cfg = _registry(registry, config)
    q_range = None
    geometry = poni or (cfg.geometry.poni if cfg is not None else None)
    if geometry is not None:
        from pbi_bluesky.reduction import as_frame

        mask_file = mask or (cfg.geometry.mask if cfg is not None and poni is None else None)
        q_range = beamline_q_range(geometry, mask=None if mask_file is None else (
            as_frame(mask_file)), npt=npt or (
            cfg.scorer.npt if cfg is not None else 400))
    try:
        v = reg.promote(bundle, q_range=q_range, note=note)
    except RegistryError as exc:
        current = reg.current()
        typer.echo(f"error: {exc}", err=True)
        typer.echo("the current model stays: " + (f"v{current.number}" if current else
                                                  "the shipped model"), err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"promoted v{v.number} (sha256 {v.model_sha256[:12]}) in {reg.root}"
               + ("" if q_range is None else
                  f"; inside the beamline's q = {q_range[0]:.4g}..{q_range[1]:.4g} 1/A"))


@command(model_app, "rollback")
def rollback(
    registry: Annotated[Path | None, typer.Option(help=REGISTRY_HELP)] = None,
    config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
) -> None:
    """Return to the model that was current before the last promotion."""
    from pbi_bluesky.models.registry import RegistryError

    reg, _cfg = _registry(registry, config)
    try:
        v = reg.rollback()
    except RegistryError as exc:
        _fail(exc)
    typer.echo(f"current: v{v.number} (sha256 {v.model_sha256[:12]})" if v else
               "current: the shipped model (nothing promoted)")
