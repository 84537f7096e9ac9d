"""The simulated beamline IOC in the foreground, as ``pbi iocs`` runs it."""

from __future__ import annotations

from sim_iocs.config import SIM_DEFAULTS

__all__ = ["SIM_DEFAULTS", "serve_sim_beamline"]


def serve_sim_beamline(argv: list[str]) -> None:
    """Run ``sim_iocs.saxs_beamline`` with these arguments until Ctrl-C or SIGTERM."""
    from sim_iocs.saxs_beamline import main as ioc_main

    ioc_main(argv)
