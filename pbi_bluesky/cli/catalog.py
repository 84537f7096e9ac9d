"""``pbi catalog flagged`` and ``pbi catalog replay-spool``: what is in the Tiled catalog.

In text output ``p`` is the exact conformal p-value (floored at 1/(n+1)) and ``p_est~``
the estimate from the fitted tail of the calibration scores, which still ranks flags beyond
that floor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pbi_bluesky.cli.app import ApiKeyOpt, catalog_app, command


@command(catalog_app, "flagged", old="flagged")
def flagged(
    tiled: Annotated[str | None, typer.Option(help="Tiled URI (default: PBI_TILED_URI or "
                                               "the embedded catalog).")] = None,
    api_key: ApiKeyOpt = None,
    data_dir: Annotated[Path | None, typer.Option(help="Embedded catalog folder.")] = None,
    composition: Annotated[str | None, typer.Option(help="Only this recipe.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, e.g. 2026-11-24T08:00.")] = None,
    min_score: Annotated[float | None, typer.Option(help="Minimum max score.")] = None,
    decision: Annotated[str | None, typer.Option(
        help="Only raw runs with this decision: confirmed, transient, no verdict, skipped "
             "(written by survey_and_rescan or `pbi agent`).")] = None,
    label: Annotated[str | None, typer.Option(
        help="Only raw runs labelled false-alarm or defect (`pbi catalog label`), or "
             "'none' for unlabelled ones.")] = None,
    model: Annotated[str | None, typer.Option(
        help="Only analyses by this model (sha256 prefix or bundle path).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List the raw runs whose live analysis flagged them."""
    from pbi_bluesky.store import flagged_runs, open_runs
    from pbi_bluesky.store.labels import LABELS
    from pbi_bluesky.store.queries import DECISIONS

    if decision is not None and decision not in DECISIONS:
        raise typer.BadParameter(f"--decision must be one of {', '.join(DECISIONS)}")
    if label is not None and label not in (*LABELS, "none"):
        raise typer.BadParameter(f"--label must be one of {', '.join(LABELS)}, none")
    try:
        runs = open_runs(tiled, api_key=api_key, data_dir=data_dir, metadata_only=True,
                         must_exist=True)
    except Exception as exc:  # noqa: BLE001 - report any connection problem plainly
        typer.echo(f"error: cannot open the Tiled catalog: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        rows = flagged_runs(runs, composition=composition, since=since, min_score=min_score,
                            decision=decision, label=label, model=model)
    except Exception as exc:  # noqa: BLE001 - a server that went away mid-query
        typer.echo(f"error: cannot query the Tiled catalog: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        typer.echo(f"{r['raw_uid']}  slot={r['slot']} sample={r['sample']} "
                   f"recipe={r['composition']} verdict={r['verdict']} flagged={r['flagged']}/"
                   f"{r['frames']} max_score={r['max_score']:.3g} "
                   f"p={_num(r['p_value'])} p_est~{_num(r['p_estimate'])} "
                   f"decision={r['decision'] or '-'} label={r['label'] or '-'}")
    typer.echo(f"{len(rows)} flagged run(s)")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


@command(catalog_app, "replay-spool", old="replay-spool")
def replay_spool(
    spool: Annotated[Path, typer.Argument(help="Spool folder (pending/ and done/ inside).")],
    tiled: Annotated[str | None, typer.Option(help="Tiled URI (default: PBI_TILED_URI or "
                                               "the embedded catalog).")] = None,
    api_key: ApiKeyOpt = None,
    data_dir: Annotated[Path | None, typer.Option(help="Embedded catalog folder.")] = None,
) -> None:
    """Write spooled runs that did not reach Tiled (it was down) into the catalog.

    Safe beside a live session: runs it is still writing are left alone (file locks), a torn
    last record is dropped and reported, a run whose writer crashed is closed as aborted.
    """
    from pbi_bluesky.store import Catalog, ReplayOutcome, SpoolSink

    catalog = Catalog(tiled, api_key=api_key, data_dir=data_dir)
    try:
        _ = catalog.runs
    except Exception as exc:  # noqa: BLE001 - report any connection problem plainly
        typer.echo(f"error: cannot open the Tiled catalog: {exc}", err=True)
        raise typer.Exit(2) from exc
    sink = SpoolSink(spool, catalog.writer, delete_partial=catalog.delete_partial,
                     auto_replay=False)
    try:
        outcomes = sink.replay()
    finally:
        sink.close(5)
    for uid, outcome in outcomes.items():
        typer.echo(f"{uid}: {outcome}")
    written = sum(o.outcome is ReplayOutcome.WRITTEN for o in outcomes.values())
    typer.echo(f"{written} of {len(outcomes)} pending run(s) written")
    if any(o.outcome is ReplayOutcome.FAILED for o in outcomes.values()):
        raise typer.Exit(1)
