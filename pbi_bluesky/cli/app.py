"""The typer application and logging set-up shared by every ``pbi`` command.

Commands live in the sibling modules (one per area) and register themselves on :data:`app`;
heavy libraries are imported inside the commands, so ``pbi --help`` and light commands start
fast.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

__all__ = ["app"]

app = typer.Typer(
    name="pbi",
    help="PolyBlendInsight for Bluesky: SAXS simulation, reduction and anomaly detection.",
    no_args_is_help=True,
    add_completion=False,
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # keep other libraries' chatter out of a scientist's terminal
        for name in ("caproto", "tiled", "pyFAI", "silx", "sasmodels", "numexpr", "httpx",
                     "matplotlib", "bluesky", "ophyd", "fabio", "h5py", "sim_iocs"):
            logging.getLogger(name).setLevel(logging.WARNING)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _setup_logging(verbose)
