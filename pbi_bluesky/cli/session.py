"""``pbi ipython``: the beamline session in IPython, writing nothing into the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from pbi_bluesky.cli.app import command
from pbi_bluesky.infra.resources import profile_dir

PROFILE = profile_dir()


@command(None, "ipython",
         context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ipython(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        help="beamline.yaml (default: $PBI_BEAMLINE_CONFIG or the simulated beamline's).")]
    = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="Data folder: catalog, spools, RunEngine metadata, IPython history.")] = None,
    device_api: Annotated[str | None, typer.Option(
        help="ophyd or async (default: the configuration's device_api).")] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="No live plot.")] = False,
) -> None:
    """Start IPython with the beamline session (RE, devices, live scorer, catalog).

    The IPython profile (history, security files) lives in the data folder; the startup
    code is run from profiles/profile_saxs/startup, the same files the queue server runs.
    Arguments after the options go to IPython: ``pbi ipython -- -c "print(RE)"``.
    """
    from pbi_bluesky.store import data_dir as resolve_data_dir

    root = resolve_data_dir(data_dir)
    profile_dir = root / "ipython_profile"
    profile_dir.mkdir(parents=True, exist_ok=True)
    startup = sorted((PROFILE / "startup").glob("*.py"))
    (profile_dir / "ipython_config.py").write_text(
        "# written by `pbi ipython`\n"
        f"c.InteractiveShellApp.exec_files = {[str(p) for p in startup]!r}\n"
        "c.TerminalIPythonApp.display_banner = False\n")
    env = {**os.environ, "PBI_PROFILE_DIR": str(PROFILE), "PBI_DATA_DIR": str(root)}
    if config:
        env["PBI_BEAMLINE_CONFIG"] = str(config.resolve())
    if device_api:
        env["PBI_DEVICE_API"] = device_api
    if no_plots:
        env["PBI_NO_PLOTS"] = "1"
    ipython_bin = Path(sys.executable).with_name("ipython")
    args = [str(ipython_bin), f"--profile-dir={profile_dir}", *ctx.args]
    raise typer.Exit(subprocess.call(args, env=env))
