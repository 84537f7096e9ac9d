"""Reduction tests build folded operators in a temporary cache folder, never the user's."""

from __future__ import annotations

import pytest

from .scenes import make_scene


@pytest.fixture(scope="package", autouse=True)
def operator_cache_dir(tmp_path_factory):
    """``$PBI_OPERATOR_CACHE`` for the reduction tests: a fresh temporary folder."""
    folder = tmp_path_factory.mktemp("operator-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PBI_OPERATOR_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def scene():
    """Pilatus 1M at 3 m, 1 A: Poisson int32 frame, dark, flat, gaps + beamstop mask."""
    return make_scene()
