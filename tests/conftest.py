"""Shared fixtures for the pbi_bluesky test suite."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def instrument():
    """The default simulated beamline: Pilatus 1M at 3 m, 1 A, beamstop, 400 q bins."""
    from pbi_bluesky.simulate import Instrument

    return Instrument()


@pytest.fixture(scope="session")
def small_instrument():
    """A Pilatus 300K at 1.5 m: small frames for Monte Carlo tests."""
    from pbi_bluesky.simulate import Instrument, make_geometry

    return Instrument(geometry=make_geometry("Pilatus300k", 1.5), npt=120,
                      q_range_inv_angstrom=(0.012, 0.18))


@pytest.fixture()
def rng():
    return np.random.default_rng(20261124)
