"""``pbi worker``: a scorer worker of the document bus; ``pbi dead-letters``: what it refused."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated

import typer

from pbi_bluesky.cli.app import app


@app.command()
def worker(
    broker: Annotated[str, typer.Option(help="Redis URL of the bus, e.g. redis://host:6379/0.")],
    tiled: Annotated[str | None, typer.Option(
        help="Tiled URI for the analysis runs (default: PBI_TILED_URI or the embedded "
             "catalog).")] = None,
    api_key: Annotated[str | None, typer.Option(
        help="Tiled API key (default: $PBI_TILED_API_KEY).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="beamline.yaml: keys, geometry, mask, dark, model, data roots, beamline "
             "name.")] = None,
    device_api: Annotated[str, typer.Option(help="ophyd or async (image key with "
                                                 "--config).")] = "ophyd",
    beamline: Annotated[str | None, typer.Option(
        help="Beamline (stream {beamline}.bluesky.runengine.documents; default: the "
             "configuration's name).")] = None,
    model: Annotated[Path | None, typer.Option(help="Model bundle (default: the "
                                                    "configuration's, else the shipped one).")]
    = None,
    poni: Annotated[Path | None, typer.Option(help="PONI file (default: the configuration's, "
                                                   "else each run's start document).")] = None,
    mask: Annotated[Path | None, typer.Option(help="Mask image.")] = None,
    dark: Annotated[Path | None, typer.Option(help="Dark image.")] = None,
    npt: Annotated[int | None, typer.Option(help="q bins of the reduction.")] = None,
    image_key: Annotated[str | None, typer.Option(help="Data key of the frames.")] = None,
    monitor_key: Annotated[str | None, typer.Option(help="Data key of I0.")] = None,
    transmission_key: Annotated[str | None, typer.Option(
        help="Data key of the transmission.")] = None,
    no_transmission: Annotated[bool, typer.Option(
        "--no-transmission", help="Streams without transmission are scored with T = 1.")]
    = False,
    data_root: Annotated[list[Path] | None, typer.Option(
        help="Folder frame files may be read from (repeat).")] = None,
    name: Annotated[str | None, typer.Option(help="Consumer name (default host-pid-id).")]
    = None,
    batch_size: Annotated[int, typer.Option(help="Frames per model pass.")] = 16,
    claim_idle: Annotated[float, typer.Option(
        help="Seconds a work item may stay unacknowledged before another worker takes it.")]
    = 10.0,
    max_deliveries: Annotated[int, typer.Option(
        help="Deliveries before a work item is dead-lettered.")] = 3,
    lease: Annotated[float, typer.Option(help="Coordinator lease, seconds.")] = 10.0,
    no_coordinate: Annotated[bool, typer.Option(
        "--no-coordinate", help="Only score; never dispatch or write Tiled.")] = False,
    no_score: Annotated[bool, typer.Option(
        "--no-score", help="Only coordinate (dispatch, write Tiled); score nothing.")]
    = False,
    tiled_batch: Annotated[int, typer.Option(
        help="Analysis events per Tiled write (each write costs ~0.4 s of server time "
             "here, whatever its size).")] = 256,
    threads: Annotated[int, typer.Option(help="CPU threads for torch and pyFAI.")] = 1,
) -> None:
    """Score frames from the beamline's document bus; several workers share the work.

    Each worker scores per-frame work items of a shared consumer group; one of them at a
    time (the lease holder) splits documents into frames and writes the analysis runs to
    Tiled. Stop with Ctrl-C or SIGTERM (the current batch is finished first).
    """
    import torch
    from threadpoolctl import threadpool_limits

    from pbi_bluesky.bus import BusWorker, tiled_writer_factory
    from pbi_bluesky.scoring.engine import FrameScorer
    from pbi_bluesky.store import Catalog

    torch.set_num_threads(max(1, threads))
    threadpool_limits(max(1, threads))
    kwargs: dict = {}
    beamline_name = beamline
    if config is not None:
        from pbi_bluesky.config import load_config

        cfg = load_config(config)
        kwargs = FrameScorer.config_kwargs(cfg, mode=device_api)
        for key in ("queue_size", "overflow", "put_timeout"):
            kwargs.pop(key, None)
        beamline_name = beamline_name or cfg.name
        tiled = tiled or cfg.tiled.uri
        api_key = api_key or cfg.tiled.api_key
    overrides = {"model": model, "poni": poni, "mask": mask, "dark": dark, "npt": npt,
                 "image_key": image_key, "monitor_key": monitor_key,
                 "transmission_key": transmission_key}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    if no_transmission:
        kwargs["transmission_required"] = False
    if data_root:
        kwargs["data_roots"] = (*kwargs.get("data_roots", ()), *map(str, data_root))
    if not beamline_name:
        typer.echo("error: give --beamline or --config", err=True)
        raise typer.Exit(2)
    try:
        core = FrameScorer(**kwargs)
    except Exception as exc:  # noqa: BLE001 - a bad model or geometry, said plainly
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(2) from exc
    if no_coordinate and no_score:
        typer.echo("error: --no-coordinate and --no-score leave nothing to do", err=True)
        raise typer.Exit(2)
    catalog = None if no_coordinate else Catalog(tiled, api_key=api_key)
    bus_worker = BusWorker(
        broker, beamline_name, core, name=name, batch_size=batch_size,
        claim_idle_s=claim_idle, max_deliveries=max_deliveries, lease_s=lease,
        writer_factory=None if catalog is None else tiled_writer_factory(catalog, tiled_batch),
        delete_partial=None if catalog is None else catalog.delete_partial,
        score=not no_score)
    signal.signal(signal.SIGTERM, lambda *_: bus_worker.stop())
    try:
        bus_worker.start()
        typer.echo(f"worker {bus_worker.name} scoring {bus_worker.names.documents}", err=True)
        bus_worker.wait()
    except KeyboardInterrupt:
        pass
    finally:
        bus_worker.stop()


@app.command("dead-letters")
def dead_letters(
    broker: Annotated[str, typer.Option(help="Redis URL of the bus.")],
    beamline: Annotated[str, typer.Option(help="Beamline.")],
    count: Annotated[int, typer.Option(help="Most recent entries shown.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List dead-lettered documents and work items, with the reason for each."""
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
