"""The embedded catalog under requests from several threads (the two spools, a reader)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from event_model import compose_run


def _write_run(runs, k: int, i: int) -> str:
    from bluesky_tiled_plugins import TiledWriter

    writer = TiledWriter(runs)
    bundle = compose_run(metadata={"writer": k, "n": i})
    writer("start", bundle.start_doc)
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "x": {"dtype": "number", "shape": [], "source": "sim"},
        "y": {"dtype": "array", "shape": [16], "source": "sim"}})
    writer("descriptor", desc.descriptor_doc)
    for j in range(3):
        now = time.time()
        writer("event", desc.compose_event(data={"x": float(j), "y": np.full(16, j).tolist()},
                                           timestamps={"x": now, "y": now}))
    writer("stop", bundle.compose_stop())
    return bundle.start_doc["uid"]


@pytest.mark.timeout(300)
def test_threads_sharing_the_embedded_catalog_never_overlap_and_lose_nothing(
    tmp_path, monkeypatch
):
    """Tiled served in-process breaks when requests overlap (500 'closed pending query
    result', requests that never return: benchmarks/stress_catalog.py --unserialised), so
    every request of every client of one catalog folder goes through one at a time,
    whatever thread sends it: measured here at the app's own transport, with a pause inside
    each request that would let unserialised requests overlap."""
    from starlette.testclient import _TestClientTransport

    from pbi_bluesky.store import open_runs

    inside, most, guard = [0], [0], threading.Lock()
    original = _TestClientTransport.handle_request

    def probe(self, request):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.002)  # lets another thread's request in, were it not serialised
            return original(self, request)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(_TestClientTransport, "handle_request", probe)
    writer_runs = [open_runs(data_dir=tmp_path) for _ in range(2)]  # two clients, one folder
    reader_runs = open_runs(data_dir=tmp_path)
    written: list[list[str]] = [[], []]
    errors: list[str] = []
    done = threading.Event()

    def write(k: int) -> None:
        try:
            for i in range(4):
                written[k].append(_write_run(writer_runs[k], k, i))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"writer {k}: {type(exc).__name__}: {exc}")

    def read() -> None:
        while not done.is_set():
            try:
                for uid in list(reader_runs)[-2:]:
                    reader_runs[uid]["primary"].read()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"reader: {type(exc).__name__}: {exc}")
                return

    threads = [threading.Thread(target=write, args=(k,)) for k in (0, 1)]
    reader = threading.Thread(target=read)
    for t in (*threads, reader):
        t.start()
    for t in threads:
        t.join(240)
    done.set()
    reader.join(60)
    assert not errors, errors
    assert most[0] == 1, f"{most[0]} requests were inside the app at once"
    for uid in written[0] + written[1]:
        events = reader_runs[uid]["primary"].read()
        assert list(np.asarray(events["x"])) == [0.0, 1.0, 2.0]
    assert len(written[0]) == len(written[1]) == 4


@pytest.mark.parametrize("lean", [False, True])
def test_the_lean_writer_closes_only_the_run_and_writes_the_same_data(tmp_path, lean):
    """``Catalog(lean_writes=True)`` (the default) ends a run with one stream close, on the
    run's own node, instead of one per table, array and stream (bench_tiled_writes.py);
    the run reads back the same, stop document included."""
    from pbi_bluesky.store import Catalog

    catalog = Catalog(data_dir=tmp_path / "cat", lean_writes=lean)
    runs = catalog.runs
    closes: list[str] = []
    runs.context.http_client.event_hooks["request"].append(
        lambda request: closes.append(request.url.path) if "/stream/close/" in
        request.url.path else None)
    writer = catalog.writer()
    bundle = compose_run(metadata={"sample": "s"})
    writer("start", bundle.start_doc)
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "x": {"dtype": "number", "shape": [], "source": "sim"},
        "y": {"dtype": "array", "shape": [40], "source": "sim"}})
    writer("descriptor", desc.descriptor_doc)
    for j in range(3):
        writer("event", desc.compose_event(data={"x": float(j), "y": np.full(40, j).tolist()},
                                           timestamps={"x": 0.0, "y": 0.0}))
    writer("stop", bundle.compose_stop())
    uid = bundle.start_doc["uid"]
    if lean:
        assert closes == [f"/api/v1/stream/close/runs/{uid}"]
    else:
        assert len(closes) == 4  # the table, the array, the stream and the run
    run = Catalog(data_dir=tmp_path / "cat").runs[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    primary = run["primary"].read()
    assert primary["x"].values.tolist() == [0.0, 1.0, 2.0]
    assert primary["y"].values.shape == (3, 40)
    assert primary["y"].values[2].tolist() == [2] * 40


def test_the_writer_event_cache_is_bounded_in_bytes(tmp_path):
    """Issue 20: TiledWriter caches 10 000 events before writing; with inline frames that is
    tens of GB. Catalog(writer_cache_bytes=...) writes a run's cached events early instead:
    12 frames of 80 kB under a 200 kB bound are held at most 2 at a time, and read back."""
    from pbi_bluesky.store import Catalog

    catalog = Catalog(data_dir=tmp_path / "cat", writer_cache_bytes=200_000)
    writer = catalog.writer()  # batch_size: TiledWriter's default, 10 000 events
    bundle = compose_run()
    writer("start", bundle.start_doc)
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "img": {"dtype": "array", "shape": [100, 100], "source": "sim",
                "dtype_numpy": "<f8"}})
    writer("descriptor", desc.descriptor_doc)
    for j in range(12):
        writer("event", desc.compose_event(data={"img": np.full((100, 100), float(j))},
                                           timestamps={"img": 0.0}))
    writer("stop", bundle.compose_stop())
    assert 160_000 <= writer.cache_stats["peak_cache_bytes"] <= 200_000
    assert writer.cache_stats["byte_flushes"] == 5  # 2 + 2 + 2 + 2 + 2 + 2 (the stop)
    img = Catalog(data_dir=tmp_path / "cat").runs[bundle.start_doc["uid"]]["primary"].read()
    assert img["img"].values.shape == (12, 100, 100)
    assert [float(v[0, 0]) for v in img["img"].values] == [float(j) for j in range(12)]


def test_the_lean_writer_registers_a_frame_by_reference_in_one_request(tmp_path):
    """The lean writer registers a StreamResource's node with its final data source in the
    one POST (the stock writer POSTs an empty node, then PUTs its data source: one request
    more per raw run, bench_tiled_writes.py); the frames read back the same."""
    import h5py

    from pbi_bluesky.store import Catalog

    frames = np.arange(2 * 4 * 5, dtype="<i4").reshape(2, 4, 5)
    h5 = tmp_path / "data" / "det.h5"
    h5.parent.mkdir()
    with h5py.File(h5, "w") as f:
        f["entry/data/data"] = frames
    catalog = Catalog(data_dir=tmp_path / "cat", readable=(str(h5.parent),))
    runs = catalog.runs
    sent: list[str] = []
    runs.context.http_client.event_hooks["request"].append(
        lambda request: sent.append(f"{request.method} {request.url.path.split('/')[3]}"))
    writer = catalog.writer()
    bundle = compose_run(metadata={"sample": "s"})
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "det": {"dtype": "array", "shape": [1, 4, 5], "source": "sim", "dtype_numpy": "<i4",
                "external": "STREAM:"},
        "i0": {"dtype": "number", "shape": [], "source": "sim"}})
    res = bundle.compose_stream_resource(mimetype="application/x-hdf5", uri=h5.as_uri(),
                                         data_key="det",
                                         parameters={"dataset": "/entry/data/data"})
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
            ("stream_resource", res.stream_resource_doc)]
    for j in range(2):
        docs.append(("stream_datum", res.compose_stream_datum(
            indices={"start": j, "stop": j + 1}, seq_nums={"start": j + 1, "stop": j + 2},
            descriptor=desc.descriptor_doc)))
        docs.append(("event", desc.compose_event(data={"i0": 1.0 + j},
                                                 timestamps={"i0": 0.0}, seq_num=j + 1)))
    for name, doc in [*docs, ("stop", bundle.compose_stop())]:
        writer(name, doc)
    assert [s for s in sent if s.startswith("PUT")] == []
    assert sent.count("POST register") == 1, sent
    run = Catalog(data_dir=tmp_path / "cat", readable=(str(h5.parent),)).runs[
        bundle.start_doc["uid"]]
    assert run.metadata["stop"]["exit_status"] == "success"
    primary = run["primary"]
    det = np.asarray(primary["det"].read())
    assert det.shape[0] == 2 and det.reshape(-1).tolist() == frames.reshape(-1).tolist()
    assert np.asarray(primary["i0"].read()).tolist() == [1.0, 2.0]
