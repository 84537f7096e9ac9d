"""Shared fixtures for the pbi_bluesky test suite."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

# the fixture modules below are imported here first: let pytest rewrite their asserts
pytest.register_assert_rewrite("tests.beamline_fixtures", "tests.queue_fixtures")

# Channel Access on loopback with free ports, set before anything imports ophyd/caproto
import tests.beamline_fixtures  # noqa: F401, E402

# the shared fixtures (sim_ioc, sim_config, beamline, queue_stack): every test module sees
# them without importing them
pytest_plugins = ["tests.beamline_fixtures", "tests.queue_fixtures"]

os.environ.setdefault("MPLBACKEND", "Agg")
# reduction operators are cached on disk: keep the suite's out of the user's cache folder.
# The process that makes the folder removes it at exit; xdist workers inherit the variable
# and share the folder (the cache writes atomically), so one run leaves nothing in /tmp.
if "PBI_OPERATOR_CACHE" not in os.environ:
    _operator_cache = tempfile.mkdtemp(prefix="pbi-test-operators-")
    os.environ["PBI_OPERATOR_CACHE"] = _operator_cache
    atexit.register(shutil.rmtree, _operator_cache, ignore_errors=True)


def simulated_normals(instrument, per_recipe: int, rng, **kwargs):
    """Simulated normal PS/PMMA profiles of ``instrument``: (profiles, recipes)."""
    from pbi_bluesky.simulate import PS_PMMA, nominal_state, simulate_profile

    profiles, recipes = [], []
    for recipe in PS_PMMA.recipes:
        for _ in range(per_recipe):
            profiles.append(simulate_profile(nominal_state(PS_PMMA, recipe, rng), instrument,
                                             rng, **kwargs))
            recipes.append(recipe)
    return profiles, recipes


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


@pytest.fixture(scope="session")
def training_set(instrument):
    """Simulated normal profiles: 40 per PS/PMMA recipe (seeded)."""
    return simulated_normals(instrument, 40, np.random.default_rng(1234))


@pytest.fixture(scope="session")
def tiny_model(training_set):
    """A small detector trained in seconds (12 epochs, alpha 0.05, one model calibrated on
    a 30 % split: 60 calibration normals)."""
    import torch

    from pbi_bluesky.models import AnomalyDetector, TrainingConfig

    torch.set_num_threads(2)
    profiles, recipes = training_set
    cfg = TrainingConfig(epochs=12, alpha=0.05, seed=0, calibration="split")
    return AnomalyDetector(training=cfg).fit(profiles, recipes, progress=False)


SIM_EXPOSURE_S = 0.1
"""Exposure of the frames the live end-to-end tests take on the sim IOC."""


@pytest.fixture(scope="session")
def instrument_300k():
    """The test IOC's instrument: a Pilatus 300K at 3 m (q range outside the beamstop)."""
    from pbi_bluesky.simulate import Instrument, make_geometry

    return Instrument(geometry=make_geometry("Pilatus300k", 3.0), npt=200,
                      q_range_inv_angstrom=(0.007, 0.085))


@pytest.fixture(scope="session")
def model_300k(instrument_300k):
    """A small detector for the test IOC's q range (simulated profiles of that instrument)."""
    from pbi_bluesky.models import AnomalyDetector, NetworkConfig, QGrid, TrainingConfig

    profiles, recipes = simulated_normals(instrument_300k, 60, np.random.default_rng(300),
                                          exposure_s=SIM_EXPOSURE_S)
    grid = QGrid(q_min=0.008, q_max=0.08, npt=128)
    detector = AnomalyDetector(grid, NetworkConfig(length=128),
                               TrainingConfig(epochs=12, alpha=0.02, seed=1,
                                              calibration="split"))
    return detector.fit(profiles, recipes, progress=False)


# -- a tiny detector for the bus and re-scoring tests (fast frames) -------------------------
@pytest.fixture(scope="session")
def bus_instrument():
    """A 128 x 128 detector (172 um pixels) at 1 m, 1 A: 64 q bins in 0.019-0.062 1/A."""
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    from pbi_bluesky.simulate import Instrument

    ai = AzimuthalIntegrator(detector=Detector(pixel1=172e-6, pixel2=172e-6,
                                               max_shape=(128, 128)), wavelength=1e-10)
    ai.setFit2D(1000.0, 64.3, 64.7)
    return Instrument(geometry=ai, npt=64, q_range_inv_angstrom=(0.019, 0.062),
                      beamstop_radius_px=10)


@pytest.fixture(scope="session")
def bus_files(bus_instrument, tmp_path_factory):
    """PONI text, mask and dark files, a trained model bundle and a data root."""
    import torch

    from pbi_bluesky.models import AnomalyDetector, NetworkConfig, QGrid, TrainingConfig
    from pbi_bluesky.models.bundle import save_bundle
    from pbi_bluesky.reduction import Reducer
    from pbi_bluesky.simulate import (
        PS_PMMA,
        expected_dark,
        nominal_state,
        render_empty_cell,
        render_frame,
    )

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("bus")
    poni = root / "tiny.poni"
    bus_instrument.write_poni(poni)
    np.save(root / "mask.npy", bus_instrument.mask.astype(np.uint8))
    np.save(root / "dark.npy", expected_dark(bus_instrument))
    # trained on rendered frames reduced like the scorers reduce them (on a detector this
    # small, simulate_profile's statistics differ enough to flag every rendered frame)
    rng = np.random.default_rng(5)
    inst = bus_instrument
    reducer = Reducer(inst.geometry, npt=inst.npt, mask=inst.mask, dark=expected_dark(inst),
                      polarization_factor=0.99)
    cell = render_empty_cell(inst, rng)
    background = reducer.reduce_absolute(cell.frame, i0=cell.monitor,
                                         transmission=cell.transmission)
    profiles, recipes = [], []
    for recipe in PS_PMMA.recipes:
        for _ in range(30):
            shot = render_frame(nominal_state(PS_PMMA, recipe, rng), inst, rng)
            profiles.append(reducer.reduce_absolute(
                shot.frame, i0=shot.monitor, transmission=shot.transmission,
                thickness_cm=0.1, background=background))
            recipes.append(recipe)
    model = AnomalyDetector(
        QGrid(q_min=0.02, q_max=0.06, npt=32),
        NetworkConfig(length=32, channels=(8, 16), hidden=32, embedding_dim=16),
        TrainingConfig(epochs=4, alpha=0.05, seed=0, calibration="split"),
    ).fit(profiles, recipes, progress=False)
    save_bundle(model, root / "model")
    data = root / "data"
    data.mkdir()
    return {"root": root, "poni": poni, "poni_text": poni.read_text(),
            "mask": root / "mask.npy", "dark": root / "dark.npy", "model": root / "model",
            "data": data}


@pytest.fixture(scope="session")
def core_kwargs(bus_files, bus_instrument):
    """FrameScorer / LiveScorer settings of the tiny detector (what the workers get)."""
    return {"model": bus_files["model"], "mask": np.load(bus_files["mask"]),
            "dark": np.load(bus_files["dark"]), "npt": bus_instrument.npt,
            "data_roots": [bus_files["data"]]}


SERVICE_FIXTURES = frozenset({"sim_ioc", "sim_config", "beamline", "queue_stack",
                              "redis_server", "tiled_server", "server", "pg", "tiled_pg",
                              "cluster"})
"""Fixtures that start a real service: an IOC, Redis, a Tiled server, PostgreSQL, the queue
server, a Dask cluster. A test using one is marked ``service`` (``-m "not service"`` runs
the rest in seconds)."""


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses a service fixture ``service``; ``e2e`` tests are too.

    Warns about a file using ``queue_stack`` that ``tests/scheduling.py`` does not list."""
    from tests.scheduling import QUEUE_STACK, work_unit

    unlisted = set()
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SERVICE_FIXTURES & fixtures or item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.service)
        if "queue_stack" in fixtures and work_unit(item.nodeid) != QUEUE_STACK:
            unlisted.add(item.nodeid.split("::", 1)[0])
    for path in sorted(unlisted):
        config.issue_config_time_warning(pytest.PytestWarning(
            f"{path} uses queue_stack: add it to QUEUE_STACK_FILES in tests/scheduling.py, or "
            "xdist starts a second queue server stack for it"), stacklevel=2)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: absent without it
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the queue-stack files as one unit, longest units first
    (:mod:`tests.scheduling`)."""
    if config.getvalue("dist") == "loadfile":
        from tests.scheduling import make_scheduler

        return make_scheduler(config, log)
    return None
