"""Fixtures of the document-bus tests: a real Redis and Tiled on loopback, a tiny detector
(128 x 128 pixels) with a model trained for its q range, and worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pbi_bluesky.services import RedisServer, TiledServer

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """Redis with its append-only file on (streams survive a restart)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiled_server(tmp_path_factory):
    server = TiledServer(tmp_path_factory.mktemp("tiled")).start()
    yield server
    server.stop()


class WorkerProcess:
    """``pbi worker`` as a subprocess (so it can be SIGKILLed)."""

    def __init__(self, name: str, beamline: str, redis: RedisServer, tiled: TiledServer,
                 files: dict, log_dir: Path, *extra: str) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        cmd = [sys.executable, "-m", "pbi_bluesky.cli", "worker", "--broker", redis.url,
               "--tiled", tiled.uri, "--api-key", tiled.api_key, "--beamline", beamline,
               "--model", str(files["model"]), "--mask", str(files["mask"]),
               "--dark", str(files["dark"]), "--npt", "64", "--data-root", str(files["data"]),
               "--name", name, "--claim-idle", "1.5", "--lease", "2", "--tiled-batch", "8",
               *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               "PYTHONFAULTHANDLER": "1"}
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env=env)

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for_consumers(client, names, workers, timeout: float = 120.0) -> None:
    """Until every worker has joined the scorer group (it has read once)."""
    import redis

    from pbi_bluesky.bus import SCORER_GROUP

    deadline = time.monotonic() + timeout
    want = {w.name for w in workers}
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc.poll() is not None:
                raise AssertionError(f"worker {w.name} exited:\n{w.log_tail()}")
        try:
            consumers = client.xinfo_consumers(names.frames, SCORER_GROUP)
        except redis.ResponseError:  # the group is not created yet
            consumers = []
        have = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                for c in consumers}
        if want <= have:
            return
        time.sleep(0.2)
    raise AssertionError("workers did not join: " + "\n".join(w.log_tail() for w in workers))


@pytest.fixture(scope="module")
def start_workers(redis_server, tiled_server, bus_files, tmp_path_factory):
    """Start named worker processes for a beamline; all stopped at the end of the module."""
    started: list[WorkerProcess] = []
    logs = tmp_path_factory.mktemp("worker-logs")

    def start(beamline: str, *names: str, extra: tuple[str, ...] = ()) -> list[WorkerProcess]:
        from pbi_bluesky.bus import BusNames, connect

        workers = [WorkerProcess(n, beamline, redis_server, tiled_server, bus_files, logs,
                                 *extra) for n in names]
        started.extend(workers)
        wait_for_consumers(connect(redis_server.url), BusNames(beamline), workers)
        return workers

    yield start
    for w in started:
        w.stop()


@pytest.fixture(scope="module")
def runs_client(tiled_server):
    """The ``runs`` container of the test Tiled server."""
    from pbi_bluesky.store import Catalog

    return Catalog(tiled_server.uri, api_key=tiled_server.api_key).runs
