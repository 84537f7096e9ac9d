"""The live scorer behind bluesky's 0MQ proxy scores exactly as it does in-process."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from event_model import compose_run

from pbi_bluesky.live import LiveScorer, make_publisher, serve_remote_scorer
from pbi_bluesky.simulate import (
    PS_PMMA,
    apply_anomaly,
    expected_dark,
    nominal_state,
    render_empty_cell,
    render_frame,
)

pytest.importorskip("zmq")

PROXY_SCRIPT = """
from bluesky.callbacks.zmq import Proxy
proxy = Proxy("tcp://127.0.0.1", "tcp://127.0.0.1")  # random free loopback ports
print(proxy.in_port, proxy.out_port, flush=True)
proxy.start()
"""


@pytest.fixture(scope="module")
def poni_text(instrument, tmp_path_factory):
    path = tmp_path_factory.mktemp("poni") / "geometry.poni"
    instrument.write_poni(path)
    return path.read_text()


def _run_docs(metadata, shots, *, shape=None):
    """The (name, doc) stream of one raw run of (frame, i0, transmission) shots."""
    bundle = compose_run(metadata=metadata)
    docs = [("start", bundle.start_doc)]
    if shots:
        shape = shape or list(shots[0][0].shape)
        desc = bundle.compose_descriptor(
            name="primary",
            data_keys={
                "det_image": {"dtype": "array", "shape": shape, "source": "sim",
                              "dtype_numpy": "<i4"},
                "beam_i0": {"dtype": "number", "shape": [], "source": "sim"},
                "beam_transmission": {"dtype": "number", "shape": [], "source": "sim"},
            },
        )
        docs.append(("descriptor", desc.descriptor_doc))
        for seq, (frame, i0, trans) in enumerate(shots, start=1):
            data = {"det_image": frame, "beam_i0": i0, "beam_transmission": trans}
            docs.append(("event", desc.compose_event(
                data=data, timestamps=dict.fromkeys(data, 0.0), seq_num=seq, validate=False)))
    docs.append(("stop", bundle.compose_stop()))
    return bundle.start_doc["uid"], docs


@pytest.fixture(scope="module")
def stream(instrument, poni_text):
    """An empty-cell run, then normal, anomalous and partly broken sample runs."""
    rng = np.random.default_rng(7)
    base_md = {"geometry": poni_text, "thickness_cm": 0.1}
    cell = render_empty_cell(instrument, rng)
    runs = [_run_docs({**base_md, "sample_type": "empty_cell", "sample": "cell"},
                      [(cell.frame, cell.monitor, cell.transmission)])]
    for kind in ("normal", "contamination", "thickness_error"):
        shots = []
        for _ in range(2):
            state = nominal_state(PS_PMMA, "50:50", rng)
            if kind != "normal":
                state = apply_anomaly(state, kind, 0.8, rng)
            shot = render_frame(state, instrument, rng)
            shots.append((shot.frame, shot.monitor, shot.transmission))
        runs.append(_run_docs({**base_md, "composition": "50:50", "sample": kind}, shots))
    good = shots[0]
    nan_frame = good[0].astype(np.float64)
    nan_frame[500, 100:110] = np.nan
    runs.append(_run_docs({**base_md, "composition": "50:50", "sample": "bad"},
                          [(nan_frame, good[1], good[2]), good]))
    return runs


@pytest.fixture()
def proxy():
    """A bluesky 0MQ proxy in a subprocess: yields its (in, out) addresses."""
    proc = subprocess.Popen([sys.executable, "-c", PROXY_SCRIPT], stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        assert line, f"proxy did not start (exit code {proc.poll()})"
        in_address, out_address = line.split()
        yield in_address, out_address
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def _connect(publish, channel, deadline_s=20.0):
    """Publish throw-away runs until the remote scorer sees one complete."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        uid, docs = _run_docs({"sample": "handshake"}, [])
        for name, doc in docs:
            publish(name, doc)
        if channel.wait_for_run(uid, 0.5) is not None:
            return
    raise AssertionError("remote scorer never received a handshake run")


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=0, abs=1e-9)


@pytest.mark.timeout(120)
def test_remote_scorer_matches_in_process(tiny_model, instrument, stream, proxy):
    in_address, out_address = proxy
    options = {"mask": instrument.mask, "dark": expected_dark(instrument),
               "npt": instrument.npt}
    remote = LiveScorer(tiny_model, **options)
    local = LiveScorer(tiny_model, **options)
    stop = threading.Event()
    errors = []

    def serve():
        try:
            serve_remote_scorer(out_address, remote, stop_event=stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    server = threading.Thread(target=serve, name="remote-scorer", daemon=True)
    server.start()
    publisher = make_publisher(in_address, settle=0)
    try:
        _connect(publisher, remote.channel)
        # one scorer at a time on the shared model: in-process first, then over 0MQ
        for _, docs in stream:
            for name, doc in docs:
                local(name, doc)
        assert local.flush(60)
        for _, docs in stream:
            for name, doc in docs:
                publisher(name, doc)
        for uid, _ in stream:
            assert remote.channel.wait_for_run(uid, 60) is not None, uid
    finally:
        stop.set()
        server.join(10)
        publisher.close()
    assert not server.is_alive()
    assert not errors, errors

    flagged = 0
    for uid, docs in stream:
        frames = sum(name == "event" for name, _ in docs)
        mine, theirs = local.channel.results(uid), remote.channel.results(uid)
        assert len(mine) == len(theirs) == frames
        for a, b in zip(mine, theirs, strict=True):
            assert (a.raw_seq_num, a.status, a.is_anomaly) == (
                b.raw_seq_num, b.status, b.is_anomaly)
            assert _same(a.score, b.score), (a, b)
            assert _same(a.p_value, b.p_value), (a, b)
            flagged += a.is_anomaly
        assert local.channel.summaries[uid] == remote.channel.summaries[uid]
    statuses = [r.status for uid, _ in stream for r in remote.channel.results(uid)]
    assert statuses[0] == "reference" and "failed" in statuses and "scored" in statuses
    assert flagged >= 2  # the anomalous runs are seen as such, over the wire too


class _Exploit:
    """Unpickling this would create a file: a stand-in for any code an attacker sends."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.timeout(120)
def test_a_pickle_payload_is_never_executed(tiny_model, proxy, tmp_path):
    import pickle

    from bluesky.callbacks.zmq import Publisher

    in_address, out_address = proxy
    marker = tmp_path / "pwned"
    remote = LiveScorer(tiny_model)
    stop = threading.Event()
    server = threading.Thread(target=serve_remote_scorer, args=(out_address, remote),
                              kwargs={"stop_event": stop}, daemon=True)
    server.start()
    good = make_publisher(in_address, settle=0)
    payload = pickle.dumps(_Exploit(marker))  # what bluesky's default (pickle) wire carries
    evil = Publisher(in_address, serializer=lambda doc: payload)
    try:
        _connect(good, remote.channel)
        for name in ("start", "descriptor", "nonsense"):
            evil(name, {})
        # the dispatcher is still alive and decodes msgpack:
        _connect(good, remote.channel)
    finally:
        stop.set()
        server.join(10)
        good.close()
        evil.close()
    assert not marker.exists()
    assert not server.is_alive()
