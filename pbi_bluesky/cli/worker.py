"""``pbi worker``: a scorer worker of the document bus; ``pbi dead-letters``: what it refused.

A worker takes the beamline's file (``--config`` or ``PBI_BEAMLINE_CONFIG``: model, geometry,
data roots, Tiled and the ``bus`` section) plus what differs between workers: ``--role``,
``--name``, ``--broker`` (when the file's ``bus.url`` is not this worker's) and
``--threads``. The options it took before the file (``--model``, ``--mask``, ``--lease``...)
still work, hidden, each with a message saying which key of the file holds it now.
"""

from __future__ import annotations

import json
import signal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from pbi_bluesky.cli.app import bus_app, command, require_extra


class Role(StrEnum):
    """What a worker does (:data:`pbi_bluesky.bus.worker.WORKER_ROLES`)."""

    both = "both"
    score = "score"
    coordinate = "coordinate"


def _opt(help_text: str, *names: str, hidden: bool = False, envvar: str | None = None) -> Any:
    return typer.Option(*names, help=help_text, hidden=hidden, envvar=envvar)


_DEPRECATED = {
    # flag: (the key of beamline.yaml that holds it now, or how to give it)
    "tiled": "tiled.uri",
    "api_key": "the environment variable named by tiled.api_key_env (a key on the command "
               "line shows in ps)",
    "device_api": "device_api",
    "beamline": "name",
    "model": "scorer.model",
    "poni": "geometry.poni",
    "mask": "geometry.mask",
    "dark": "geometry.dark",
    "npt": "scorer.npt",
    "image_key": "detector.name (the image key is <name>_image, or <name> with device_api "
                 "async)",
    "monitor_key": "monitors.i0_name",
    "transmission_key": "monitors.transmission_name",
    "no_transmission": "monitors.transmission: null",
    "data_root": "scorer.data_roots",
    "batch_size": "scorer.batch_size",
    "claim_idle": "bus.claim_idle_s",
    "max_deliveries": "bus.max_deliveries",
    "lease": "bus.lease_s",
    "tiled_batch": "bus.tiled_batch",
    "no_coordinate": "--role score",
    "no_score": "--role coordinate",
}


def deprecated_flags(cfg: Any, flags: dict[str, Any]) -> tuple[Any, dict[str, Any], list[str]]:
    """Apply the deprecated ``pbi worker`` flags that were given to the beamline settings.

    Parameters
    ----------
    cfg
        The beamline's settings (:class:`~pbi_bluesky.config.BeamlineConfig`).
    flags
        The deprecated options by parameter name (``None``/``False``/empty: not given).

    Returns
    -------
    tuple
        The settings with the flags applied, :class:`~pbi_bluesky.scoring.engine.
        FrameScorer` keyword overrides (data keys the file does not hold as such), and one
        deprecation message per flag given.
    """
    given = {k: v for k, v in flags.items() if v not in (None, False, [], ())}
    notes = [f"pbi worker: --{k.replace('_', '-')} is deprecated: set {_DEPRECATED[k]}"
             + ("" if _DEPRECATED[k].startswith(("--", "the ")) else " in beamline.yaml")
             for k in given]
    sections: dict[str, dict[str, Any]] = {}

    def put(section: str, key: str, value: Any) -> None:
        sections.setdefault(section, {})[key] = value

    for flag, (section, key) in {"tiled": ("tiled", "uri"), "model": ("scorer", "model"),
                                 "poni": ("geometry", "poni"), "mask": ("geometry", "mask"),
                                 "dark": ("geometry", "dark"), "npt": ("scorer", "npt"),
                                 "batch_size": ("scorer", "batch_size"),
                                 "claim_idle": ("bus", "claim_idle_s"),
                                 "max_deliveries": ("bus", "max_deliveries"),
                                 "lease": ("bus", "lease_s"),
                                 "tiled_batch": ("bus", "tiled_batch")}.items():
        if flag in given:
            value = given[flag]
            put(section, key, str(value) if isinstance(value, Path) else value)
    if "data_root" in given:
        put("scorer", "data_roots", (*cfg.scorer.data_roots, *map(str, given["data_root"])))
    top = {k: given[f] for f, k in (("device_api", "device_api"), ("beamline", "name"))
           if f in given}
    if sections or top:
        cfg = cfg.with_overrides(**sections, **top)
    scorer = {k: given[k] for k in ("image_key", "monitor_key", "transmission_key")
              if k in given}
    if given.get("no_transmission"):
        scorer["transmission_required"] = False
    return cfg, scorer, notes


@command(bus_app, "worker", old="worker")
def worker(
    config: Annotated[Path | None, _opt(
        "beamline.yaml: the model, geometry, data roots, Tiled, and the bus section (broker, "
        "reclaiming, lease). Default: $PBI_BEAMLINE_CONFIG.", "--config",
        envvar="PBI_BEAMLINE_CONFIG")] = None,
    role: Annotated[Role, _opt(
        "both: score, and coordinate when holding the lease; score: never dispatch or "
        "write Tiled; coordinate: score nothing.")] = Role.both,
    name: Annotated[str | None, _opt("Consumer name (default host-pid-id).")] = None,
    broker: Annotated[str | None, _opt(
        "Redis URL of the bus, if the file's bus.url is not this worker's.")] = None,
    threads: Annotated[int, _opt("CPU threads for torch and pyFAI.")] = 1,
    # -- deprecated: each restates a key of beamline.yaml (see _DEPRECATED) ---------------
    tiled: Annotated[str | None, _opt("", hidden=True)] = None,
    api_key: Annotated[str | None, _opt("", hidden=True)] = None,
    device_api: Annotated[str | None, _opt("", hidden=True)] = None,
    beamline: Annotated[str | None, _opt("", hidden=True)] = None,
    model: Annotated[Path | None, _opt("", hidden=True)] = None,
    poni: Annotated[Path | None, _opt("", hidden=True)] = None,
    mask: Annotated[Path | None, _opt("", hidden=True)] = None,
    dark: Annotated[Path | None, _opt("", hidden=True)] = None,
    npt: Annotated[int | None, _opt("", hidden=True)] = None,
    image_key: Annotated[str | None, _opt("", hidden=True)] = None,
    monitor_key: Annotated[str | None, _opt("", hidden=True)] = None,
    transmission_key: Annotated[str | None, _opt("", hidden=True)] = None,
    no_transmission: Annotated[bool, _opt("", "--no-transmission", hidden=True)] = False,
    data_root: Annotated[list[Path] | None, _opt("", hidden=True)] = None,
    batch_size: Annotated[int | None, _opt("", hidden=True)] = None,
    claim_idle: Annotated[float | None, _opt("", hidden=True)] = None,
    max_deliveries: Annotated[int | None, _opt("", hidden=True)] = None,
    lease: Annotated[float | None, _opt("", hidden=True)] = None,
    no_coordinate: Annotated[bool, _opt("", "--no-coordinate", hidden=True)] = False,
    no_score: Annotated[bool, _opt("", "--no-score", hidden=True)] = False,
    tiled_batch: Annotated[int | None, _opt("", hidden=True)] = None,
) -> None:
    """Score frames from the beamline's document bus; several workers share the work.

    Everything but what differs between workers comes from the beamline's file. Each
    worker scores per-frame work items of a shared consumer group; one of them at a time
    (the lease holder) splits documents into frames and writes the analysis runs to
    Tiled. Stop with Ctrl-C or SIGTERM (the current batch is finished first).
    """
    require_extra("bus", "pbi bus worker", ("redis",))
    import torch
    from threadpoolctl import threadpool_limits

    flags = {k: v for k, v in locals().items() if k in _DEPRECATED}
    if no_coordinate and no_score:
        typer.echo("error: --no-coordinate and --no-score leave nothing to do", err=True)
        raise typer.Exit(2)
    chosen = "score" if no_coordinate else "coordinate" if no_score else role.value
    torch.set_num_threads(max(1, threads))
    threadpool_limits(max(1, threads))
    try:
        bus_worker = (_from_settings(config, flags, broker, name, chosen)
                      if config is not None else _from_flags(flags, broker, name, chosen))
    except Exception as exc:  # noqa: BLE001 - a bad file, model or geometry, said plainly
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(2) from exc
    signal.signal(signal.SIGTERM, lambda *_: bus_worker.stop())
    try:
        bus_worker.start()
        typer.echo(f"worker {bus_worker.name} scoring {bus_worker.names.documents}", err=True)
        bus_worker.wait()
    except KeyboardInterrupt:
        pass
    finally:
        bus_worker.stop()


def _from_settings(config: Path, flags: dict[str, Any], broker: str | None,
                   name: str | None, role: str) -> Any:
    """Build the worker of a beamline file (with any deprecated flags applied on top)."""
    from pbi_bluesky.bus.worker import BusWorker
    from pbi_bluesky.config import load_config
    from pbi_bluesky.scoring.engine import FrameScorer

    cfg, scorer, notes = deprecated_flags(load_config(config), flags)
    for note in notes:
        typer.echo(note, err=True)
    catalog = None
    if flags.get("api_key") and role != "score":
        from pbi_bluesky.store import Catalog

        catalog = Catalog(cfg.tiled.uri, api_key=flags["api_key"])
    return BusWorker.from_settings(cfg, url=broker, name=name, role=role,
                                   core=FrameScorer.from_settings(cfg, **scorer),
                                   catalog=catalog)


def _from_flags(flags: dict[str, Any], broker: str | None, name: str | None,
                role: str) -> Any:
    """Build a worker from the deprecated flags alone, without a beamline file.

    As ``pbi worker`` took them before the settings file: kept so that no script breaks;
    each flag says where it went.
    """
    from pbi_bluesky.bus import BusWorker, tiled_writer_factory
    from pbi_bluesky.scoring.engine import FrameScorer
    from pbi_bluesky.store import Catalog

    if not flags.get("beamline") or not broker:
        raise ValueError("give the beamline's file (--config or PBI_BEAMLINE_CONFIG; the "
                         "broker in its bus.url or --broker)")
    for k in (k for k, v in flags.items() if v not in (None, False, [], ())):
        typer.echo(f"pbi worker: --{k.replace('_', '-')} is deprecated: set {_DEPRECATED[k]}"
                   " (in beamline.yaml, given with --config)", err=True)
    kwargs: dict[str, Any] = {k: flags[k] for k in ("model", "poni", "mask", "dark", "npt",
                                                    "image_key", "monitor_key",
                                                    "transmission_key")
                              if flags.get(k) is not None}
    if flags.get("no_transmission"):
        kwargs["transmission_required"] = False
    if flags.get("data_root"):
        kwargs["data_roots"] = tuple(map(str, flags["data_root"]))
    core = FrameScorer(**kwargs)
    catalog = None if role == "score" else Catalog(flags.get("tiled"),
                                                   api_key=flags.get("api_key"))
    return BusWorker(
        broker, flags["beamline"], core, name=name, batch_size=flags.get("batch_size") or 16,
        claim_idle_s=flags.get("claim_idle") or 10.0,
        max_deliveries=flags.get("max_deliveries") or 3, lease_s=flags.get("lease") or 10.0,
        writer_factory=None if catalog is None else tiled_writer_factory(
            catalog, flags.get("tiled_batch") or 256),
        delete_partial=None if catalog is None else catalog.delete_partial,
        score=role != "coordinate")


@command(bus_app, "dead-letters", old="dead-letters")
def dead_letters(
    broker: Annotated[str, typer.Option(help="Redis URL of the bus.")],
    beamline: Annotated[str, typer.Option(help="Beamline.")],
    count: Annotated[int, typer.Option(help="Most recent entries shown.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List dead-lettered documents and work items, with the reason for each."""
    require_extra("bus", "pbi bus dead-letters", ("redis",))
    from pbi_bluesky.bus import BusNames, connect

    names = BusNames(beamline)
    try:
        entries = connect(broker).xrevrange(names.dead, count=count)
    except Exception as exc:  # noqa: BLE001
        typer.echo(f"error: cannot read {names.dead} at {broker}: {exc}", err=True)
        raise typer.Exit(2) from exc
    rows = [{"id": i.decode(), **{k.decode(): v.decode(errors="replace") for k, v in f.items()
                                  if k != b"payload"}} for i, f in entries]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        typer.echo(f"{r['id']}  {r.get('source')} {r.get('name') or r.get('key') or ''} "
                   f"run={r.get('run', '')[:8]}: {r.get('reason')}")
    typer.echo(f"{len(rows)} dead letter(s) shown")
