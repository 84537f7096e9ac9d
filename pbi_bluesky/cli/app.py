"""The typer application and logging set-up shared by every ``pbi`` command.

Commands live in the sibling modules (one per area) and register themselves on :data:`app`;
heavy libraries are imported inside the commands, so ``pbi --help`` and light commands start
fast (measured by ``benchmarks/bench_startup.py``).

Logging: at the default level a scientist's terminal shows this package's INFO messages and
every library's warnings and errors, but no third-party INFO chatter (alembic migrations,
Tiled's version banner, ...). Some libraries set their own logger levels or attach their own
handlers when imported, *after* this set-up ran, so the filter sits on the root handler and
on the loggers known to print through a handler of their own. ``--verbose`` shows
everything at DEBUG.
"""

from __future__ import annotations

import logging
import warnings
from typing import Annotated

import typer

__all__ = ["OWN_PREFIX", "QuietThirdParty", "app"]

OWN_PREFIX = "pbi_bluesky"
# loggers that attach a handler of their own on import (seen in tiled 0.2.20)
_SELF_HANDLED = ("tiled.server.app", "tiled.access_control.access_policies",
                 "tiled.catalog.migrations")

app = typer.Typer(
    name="pbi",
    help="PolyBlendInsight for Bluesky: SAXS simulation, reduction and anomaly detection.",
    no_args_is_help=True,
    add_completion=False,
)


class QuietThirdParty(logging.Filter):
    """Pass records of this package at any level, other libraries' at WARNING and above."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        name = record.name
        return name == OWN_PREFIX or name.startswith(OWN_PREFIX + ".") or name == "__main__"


_FILTER = QuietThirdParty()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if verbose:
        return
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    for name in _SELF_HANDLED:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    # other libraries' deprecation notices are for their developers, not for a beamline
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=rf"(?!{OWN_PREFIX})")
    warnings.filterwarnings("ignore", message=r".*deprecated.*", category=UserWarning,
                            module=r"(?!pbi_bluesky)")


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _setup_logging(verbose)
