"""``pbi catalog label`` and ``pbi review``: people judge flags, in a terminal or a browser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pbi_bluesky.cli.app import catalog_app, command

TiledOpt = Annotated[str | None, typer.Option(
    "--tiled", help="Tiled URI (default: PBI_TILED_URI or the embedded catalog).")]
ApiKeyOpt = Annotated[str | None, typer.Option(
    "--api-key", help="Tiled API key (default: PBI_TILED_API_KEY).")]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Embedded catalog folder (the one holding catalog.db).")]


@command(catalog_app, "label", old="label")
def label(
    raw_uid: Annotated[str, typer.Argument(help="The flagged raw run's uid.")],
    false_alarm: Annotated[bool, typer.Option(
        "--false-alarm", help="The flag was wrong: the sample is normal.")] = False,
    defect: Annotated[bool, typer.Option(
        "--defect", help="The flag was right: a confirmed defect.")] = False,
    note: Annotated[str | None, typer.Option(help="Why (free text).")] = None,
    by: Annotated[str | None, typer.Option(help="Who labels (default: login name).")] = None,
    tiled: TiledOpt = None,
    api_key: ApiKeyOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
) -> None:
    """Label a flagged run a false alarm or a confirmed defect.

    The label is a record of its own in the same catalog (who, when, the note, which
    analysis run and model); the analysis is never edited. The newest label of a run counts.
    """
    from pbi_bluesky.store import LabelError, label_run, open_runs

    if false_alarm == defect:
        typer.echo("error: give exactly one of --false-alarm and --defect", err=True)
        raise typer.Exit(2)
    try:
        runs = open_runs(tiled, api_key=api_key, data_dir=data_dir, must_exist=True)
    except Exception as exc:  # noqa: BLE001 - report any connection problem plainly
        typer.echo(f"error: cannot open the Tiled catalog: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        record = label_run(runs, raw_uid, "false-alarm" if false_alarm else "defect",
                           note=note, by=by)
    except LabelError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except Exception as exc:  # noqa: BLE001 - the server refused or went away
        typer.echo(f"error: the label was not written: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(record))
        return
    typer.echo(f"{raw_uid}: labelled {record['label']} by {record['labelled_by']} "
               f"(record {record['uid']}, analysis {record['analysis_uid']})")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@command(None, "review")
def review(
    tiled: TiledOpt = None,
    api_key: ApiKeyOpt = None,
    data_dir: DataDirOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default; "
                                           "the page has no login).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8765,
) -> None:
    """Review flagged runs in a browser: evidence, plots, and label buttons.

    Serves a local page (no CDN, no JavaScript library) over the catalog; the Tiled API key
    stays in this process and never appears in the page.
    """
    import logging

    import uvicorn

    from pbi_bluesky.review import ReviewData, build_app

    data = ReviewData(tiled, api_key=api_key, data_dir=data_dir)
    try:
        data.check()
    except Exception as exc:  # noqa: BLE001 - report any connection problem plainly
        typer.echo(f"error: cannot open the Tiled catalog: {exc}", err=True)
        raise typer.Exit(2) from exc
    if host not in LOOPBACK:
        logging.getLogger("pbi_bluesky.cli").warning(
            "serving the review page on %s: anyone who reaches it can label runs", host)
    typer.echo(f"pbi review: http://{host}:{port}/ (Ctrl-C stops)")
    uvicorn.run(build_app(data), host=host, port=port, log_level="warning")
