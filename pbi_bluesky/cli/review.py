"""``pbi catalog label`` and ``pbi review``: people judge flags, in a terminal or a browser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pbi_bluesky.cli.app import ApiKeyOpt, catalog_app, command, model_app

TiledOpt = Annotated[str | None, typer.Option(
    "--tiled", help="Tiled URI (default: PBI_TILED_URI or the embedded catalog).")]
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


@command(model_app, "recalibrate", old="recalibrate")
def recalibrate(
    model: Annotated[Path, typer.Option("--model", help="The bundle to recalibrate.")],
    out: Annotated[Path, typer.Option("--out", help="Folder of the new bundle.")],
    tiled: TiledOpt = None,
    api_key: ApiKeyOpt = None,
    data_dir: DataDirOpt = None,
    allow_unflagging: Annotated[bool, typer.Option(
        "--allow-unflagging", help="Write the bundle even where it would no longer flag a "
                                   "run labelled a confirmed defect (a warning then).")
    ] = False,
) -> None:
    """Turn runs labelled false alarms into calibration normals; write a new bundle.

    The labelled runs' reduced curves join the model's conformal calibration set (scored
    out of sample, the network is not refitted), so that recipe's threshold follows. The
    original bundle is left as it is; the new one carries a per-recipe table
    (``recalibration.json`` and ``model.json``), signed where ``PBI_MODEL_KEY`` is set.
    Runs labelled confirmed defects are scored by the old and the new model: the table
    says per recipe how many each flags, and a recalibration that would no longer flag
    one is refused (exit 1) unless ``--allow-unflagging``.
    """
    from pbi_bluesky.models import save_bundle
    from pbi_bluesky.models.bundle import BundleError, load_bundle
    from pbi_bluesky.models.recalibrate import (
        add_calibration_normals,
        flag_runs,
        unflagged_defects,
    )
    from pbi_bluesky.store import labelled_frames, open_runs

    if not (model / "model.json").is_file():
        typer.echo(f"error: {model} is not a model bundle folder (no model.json)", err=True)
        raise typer.Exit(2)
    if out.resolve() == model.resolve():
        typer.echo("error: --out must differ from --model (the original stays as it is)",
                   err=True)
        raise typer.Exit(2)
    try:
        detector = load_bundle(model, for_scoring=False)
        old_doc = json.loads((model / "model.json").read_text())
    except BundleError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        runs = open_runs(tiled, api_key=api_key, data_dir=data_dir, must_exist=True)
        alarms = [g for g in labelled_frames(runs, "false-alarm") if g["profiles"]]
        defects = labelled_frames(runs, "defect")
    except Exception as exc:  # noqa: BLE001 - report any connection problem plainly
        typer.echo(f"error: cannot read the Tiled catalog: {exc}", err=True)
        raise typer.Exit(2) from exc
    profiles = [p for g in alarms for p in g["profiles"]]
    recipes = [g["recipe"] for g in alarms for _ in g["profiles"]]
    used = [g["raw_uid"] for g in alarms]
    if not profiles:
        typer.echo("error: no run in the catalog is labelled a false alarm (with its reduced "
                   "curves): label some with `pbi catalog label RAW_UID --false-alarm`",
                   err=True)
        raise typer.Exit(1)
    try:
        before = flag_runs(detector, defects)
        table = add_calibration_normals(detector, profiles, recipes)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    after = flag_runs(detector, defects)
    lost = unflagged_defects(before, after)
    for row in table:
        name = row["recipe"]
        row["defects"] = sum(r["recipe"] == name and r["flagged"] is not None for r in after)
        row["defects_flagged_old"] = sum(r["recipe"] == name and bool(r["flagged"])
                                         for r in before)
        row["defects_flagged_new"] = sum(r["recipe"] == name and bool(r["flagged"])
                                         for r in after)
        row["defects_unflagged"] = lost.get(name, [])
    for name, uids in lost.items():
        typer.echo(f"{'warning' if allow_unflagging else 'error'}: recipe {name}: the new "
                   f"flag level would no longer flag {len(uids)} run(s) labelled a confirmed "
                   f"defect: {', '.join(uids)}", err=True)
    if lost and not allow_unflagging:
        typer.echo("error: not written; label fewer runs false alarms, check these defects' "
                   "labels, or give --allow-unflagging", err=True)
        raise typer.Exit(1)
    record = {"from": str(model.resolve()), "runs": used, "table": table,
              "defects": after}
    save_bundle(detector, out, training_data_sha256=old_doc.get("training_data_sha256", ""),
                extra={"recalibration": record})
    (out / "recalibration.json").write_text(json.dumps(record, indent=1))
    typer.echo(f"wrote {out} ({len(profiles)} frames of {len(used)} false-alarm runs)")
    typer.echo(f"{'recipe':>10} {'added':>5} {'n':>9} {'threshold':>21} {'flag level':>17} "
               f"{'defects flagged':>15}")
    for r in table:
        typer.echo(f"{r['recipe']:>10} {r['added']:>5} {r['old_n']:>4}->{r['new_n']:<4} "
                   f"{r['old_threshold']:>10.4g}->{r['new_threshold']:<10.4g} "
                   f"{r['old_flag_level'] or float('nan'):>8.3g}->"
                   f"{r['new_flag_level'] or float('nan'):<8.3g} "
                   f"{r['defects_flagged_old']:>4}->{r['defects_flagged_new']} of "
                   f"{r['defects']}")
