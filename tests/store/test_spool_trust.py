"""Issue 20: nothing the spool holds is silently lost (interleaved runs, unencodable
values, a full disk, oversized files, locks, runs without a start, unsafe uids)."""

from __future__ import annotations

import httpx
import numpy as np
from event_model import compose_run

from pbi_bluesky.store import Catalog, SpoolSink


def _run(n_events: int, **md):
    """A raw-like run: start, descriptor, ``n_events`` events, stop."""
    bundle = compose_run(metadata={"purpose": "spool trust test", **md})
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "x": {"dtype": "number", "shape": [], "source": "test"},
        "y": {"dtype": "array", "shape": [4], "source": "test", "dtype_numpy": "<f8"}})
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    for i in range(n_events):
        data = {"x": float(i), "y": np.arange(4.0) + i}
        docs.append(("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0),
                                                 seq_num=i + 1)))
    docs.append(("stop", bundle.compose_stop()))
    return docs


def _http_503(url: str) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", url)
    return httpx.HTTPStatusError("503 Service Unavailable", request=request,
                                 response=httpx.Response(503, request=request))


class RefuseStartOnce:
    """Writer factory around the real one: each writer it makes refuses the start document
    of run ``victim`` the first time any writer sees it (a 503 from Tiled)."""

    def __init__(self, factory, victim: str) -> None:
        self.factory, self.victim, self.refused = factory, victim, 0
        self.made = 0

    def __call__(self):
        self.made += 1
        inner = self.factory()

        def write(name, doc):
            if name == "start" and doc["uid"] == self.victim and not self.refused:
                self.refused += 1
                raise _http_503("http://tiled/api/v1/metadata/runs")
            return inner(name, doc)

        return write


def test_interleaved_runs_survive_a_refused_start(tmp_path):
    """Issue 20, checked 1: run B's start is refused while run A is open; A must arrive in
    Tiled complete (4 events and its stop) exactly once, and B too after its replay."""
    catalog = Catalog(data_dir=tmp_path / "tiled")
    a, b = _run(4, sample="A"), _run(2, sample="B")
    ua, ub = a[0][1]["uid"], b[0][1]["uid"]
    flaky = RefuseStartOnce(catalog.writer, ub)
    sink = SpoolSink(tmp_path / "spool", flaky, delete_partial=catalog.delete_partial,
                     replay_wait_initial=0.05, replay_wait_max=0.2)
    for doc in a[:-1]:  # A: start, descriptor, 4 events
        sink(*doc)
    sink(*b[0])  # B starts while A is still open: refused once
    sink(*a[-1])  # A's stop
    for doc in b[1:]:
        sink(*doc)
    assert sink.close(60), sink.pending()
    assert flaky.refused == 1
    runs = catalog.runs
    for uid, n in ((ua, 4), (ub, 2)):
        run = runs[uid]
        assert run.metadata["stop"] is not None, f"run {uid[:8]} has no stop in Tiled"
        assert run.metadata["stop"]["exit_status"] == "success"
        ds = run["primary"].read()
        assert ds.sizes["time"] == n
        assert sorted(np.asarray(ds["x"]).tolist()) == [float(i) for i in range(n)]
    assert sink.stats["replayed_runs"] == 1  # B only: A went straight through
    assert sorted(p.stem for p in (tmp_path / "spool" / "done").glob("*.spool")) == sorted(
        [ua, ub])
