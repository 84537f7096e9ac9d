"""The ``pbi`` command line (typer): simulate, reduce, train, score, demo, catalog queries."""

from __future__ import annotations

import sys

from pbi_bluesky.cli import (  # noqa: F401 - the commands register themselves
    agent,
    beamline,
    catalog,
    data,
    evaluate,
    model,
    registry,
    rescore,
    review,
    scale,
    session,
    worker,
)
from pbi_bluesky.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``pbi`` console script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
