"""ophyd-async devices from beamline.yaml: a step scan and a fly scan through a RunEngine."""

from __future__ import annotations

import h5py
import numpy as np
import pytest


@pytest.fixture(scope="module")
def async_beamline(sim_config):
    from bluesky import RunEngine

    from pbi_bluesky.devices import make_async_beamline
    from pbi_bluesky.plans import use_tray

    RE = RunEngine({})
    use_tray(sim_config.tray)
    yield RE, make_async_beamline(sim_config)
    use_tray(None)


def _docs(RE, plan):
    docs = []
    RE(plan, lambda n, d: docs.append((n, d)))
    return docs


def _h5_path(resource):
    return resource["uri"].removeprefix("file://localhost")


def test_step_scan_records_i0_with_every_frame(async_beamline):
    from pbi_bluesky.plans import measure_tray

    RE, bl = async_beamline
    docs = _docs(RE, measure_tray(bl.readables, bl.changer, [5, 1], 0.05))
    starts = [d for n, d in docs if n == "start"]
    assert [s["slot"] for s in starts] == [5, 1]
    resources = [d for n, d in docs if n == "stream_resource"]
    keys = {r["data_key"] for r in resources}
    assert {"saxs", "i0", "transmission"} <= keys
    descriptor = next(d for n, d in docs if n == "descriptor")
    assert descriptor["data_keys"]["saxs"]["external"] == "STREAM:"
    image = next(r for r in resources if r["data_key"] == "saxs")
    i0 = next(r for r in resources if r["data_key"] == "i0")
    with h5py.File(_h5_path(image), "r", locking=False) as fh:
        frames = fh[image["parameters"]["dataset"]][()]
        monitors = fh[i0["parameters"]["dataset"]][()]
    assert frames.shape[0] == 1 and frames.max() > 0
    assert monitors.shape == (1,) and monitors[0] > 0


def test_fly_scan_of_n_frames_at_a_set_rate(async_beamline):
    from pbi_bluesky.plans import fly_slot

    RE, bl = async_beamline
    docs = _docs(RE, fly_slot(bl.detector, bl.changer, 6, 8, 0.02, period=0.05,
                              monitors=bl.monitors))
    datums = [d for n, d in docs if n == "stream_datum"]
    resources = {d["uid"]: d for n, d in docs if n == "stream_resource"}
    per_key: dict[str, int] = {}
    for d in datums:
        key = resources[d["stream_resource"]]["data_key"]
        per_key[key] = per_key.get(key, 0) + d["indices"]["stop"] - d["indices"]["start"]
    assert per_key["saxs"] == 8 and per_key["i0"] == 8 and per_key["transmission"] == 8
    image = next(r for r in resources.values() if r["data_key"] == "saxs")
    with h5py.File(_h5_path(image), "r", locking=False) as fh:
        frames = fh["/entry/data/data"][()]
    assert frames.shape[0] == 8
    assert np.all(frames.reshape(8, -1).max(axis=1) > 0)
    start = next(d for n, d in docs if n == "start")
    assert start["n_frames"] == 8 and start["frame_period_s"] == 0.05
