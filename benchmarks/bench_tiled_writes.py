"""Where a run's write time goes against a real Tiled server (issue 22, item 1).

A real ``tiled serve catalog`` (:class:`~pbi_bluesky.testing.services.TiledServer`)
receives N raw-like runs (a Pilatus frame by reference: StreamResource + StreamDatum,
I0 and transmission in events, as ``measure_tray`` writes them) and N analysis runs (the
documents a real :class:`~pbi_bluesky.live.LiveScorer` composes for one frame, each
copy under fresh uids), one pair every ``--period`` seconds, through the path the
session uses: a :class:`~pbi_bluesky.store.SpoolSink` per kind in front of the one
writer factory, :meth:`~pbi_bluesky.store.Catalog.writer` (analysis runs
``composed=True``).

It reports, from the server's own Prometheus counters, write requests per run by method
and endpoint and ms each inside the server; the writer's ms per run; and the time from
a run's stop document (handed to the spool) to the run being complete in Tiled (the
writer returned from the stop: every event and the stop metadata written, the run
closed), median and p95, per kind, split into the wait in the spool's queue (behind other
runs) and the stop's own write. ``--lean`` compares the default writer with the lean one
(``Catalog(lean_writes=...)``) on the same server in one run. Both write the analysis
curves (q, intensity, sigma) as columns of the stream's table, as the session does;
``--only-lean`` measures the lean writer alone (a long tray: ``--runs 100``);
``--arrays-as-nodes`` adds the lean writer with the curves as array nodes (the layout of
older versions, six requests more per analysis run), for comparison in the same run. Ends
with one JSON line.

    PYTHONPATH=$PWD python benchmarks/bench_tiled_writes.py --runs 20 --period 1.0 --lean
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np


def _p95(values: list[float]) -> float | None:
    return round(float(np.percentile(values, 95)), 3) if values else None


def _median(values: list[float]) -> float | None:
    return round(float(statistics.median(values)), 3) if values else None


def analysis_template() -> list[tuple[str, dict]]:
    """The documents a real LiveScorer writes for one raw run of one normal frame."""
    from event_model import compose_run

    from pbi_bluesky.live import LiveScorer
    from pbi_bluesky.models.bundle import load_default_model
    from pbi_bluesky.simulate import PS_PMMA, Instrument, expected_dark, nominal_state, render_frame

    inst = Instrument()
    rng = np.random.default_rng(0)
    shot = render_frame(nominal_state(PS_PMMA, "50:50", rng), inst, rng)
    with tempfile.TemporaryDirectory() as tmp:
        poni = Path(tmp) / "g.poni"
        inst.write_poni(poni)
        poni_text = poni.read_text()
    docs: list[tuple[str, dict]] = []
    scorer = LiveScorer(load_default_model(), mask=inst.mask, dark=expected_dark(inst),
                        npt=inst.npt, sinks=[lambda n, d: docs.append((n, d))])
    bundle = compose_run(metadata={"geometry": poni_text, "thickness_cm": 0.1,
                                   "composition": "50:50", "sample": "s"})
    data_keys = {"det_image": {"dtype": "array", "shape": list(shot.frame.shape),
                               "source": "sim", "dtype_numpy": "<i4"},
                 "beam_i0": {"dtype": "number", "shape": [], "source": "sim"},
                 "beam_transmission": {"dtype": "number", "shape": [], "source": "sim"}}
    desc = bundle.compose_descriptor(name="primary", data_keys=data_keys)
    data = {"det_image": shot.frame, "beam_i0": shot.monitor,
            "beam_transmission": shot.transmission}
    for name, doc in [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
                      ("event", desc.compose_event(data=data,
                                                   timestamps=dict.fromkeys(data, 0.0),
                                                   seq_num=1, validate=False)),
                      ("stop", bundle.compose_stop())]:
        scorer(name, doc)
    if not scorer.flush(120):
        raise RuntimeError("the scorer did not finish its one frame in 120 s")
    scorer.close()
    if not docs or docs[-1][0] != "stop":
        raise RuntimeError(f"the scorer wrote no complete analysis run: {[n for n, _ in docs]}")
    return docs


def raw_template() -> list[tuple[str, dict]]:
    """A raw run as ``measure_tray`` writes it: the frame by reference, I0/T in events."""
    from event_model import compose_run

    bundle = compose_run(metadata={"plan_name": "measure_tray", "sample": "s", "slot": 1,
                                   "composition": "50:50", "thickness_cm": 0.1})
    keys = {"det_image": {"dtype": "array", "shape": [1, 981, 1043], "source": "sim",
                          "dtype_numpy": "<i4", "external": "STREAM:"},
            "beam_i0": {"dtype": "number", "shape": [], "source": "sim"},
            "beam_transmission": {"dtype": "number", "shape": [], "source": "sim"}}
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    res = bundle.compose_stream_resource(mimetype="application/x-hdf5",
                                         uri="file://localhost/data/x.h5",
                                         data_key="det_image",
                                         parameters={"dataset": "/entry/data/data"})
    data = {"beam_i0": 1.0e6, "beam_transmission": 0.6}
    return [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
            ("stream_resource", res.stream_resource_doc),
            ("stream_datum", res.compose_stream_datum(
                indices={"start": 0, "stop": 1}, seq_nums={"start": 1, "stop": 2},
                descriptor=desc.descriptor_doc)),
            ("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0),
                                         seq_num=1, validate=False)),
            ("stop", bundle.compose_stop())]


def _renamed(obj: Any, names: dict[str, str]) -> Any:
    if isinstance(obj, str):  # a uid, or a StreamDatum's "<resource uid>/<n>"
        head, sep, tail = obj.partition("/")
        return names.get(obj) or (names[head] + sep + tail if sep and head in names else obj)
    if isinstance(obj, dict):
        return {k: _renamed(v, names) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_renamed(v, names) for v in obj)
    return obj


def fresh_copy(template: list[tuple[str, dict]]) -> tuple[str, list[tuple[str, dict]]]:
    """The template under new uids (every uid and every reference to it renamed)."""
    names = {d["uid"]: str(uuid.uuid4()) for _, d in template if isinstance(d.get("uid"), str)}
    docs = [(n, _renamed(d, names)) for n, d in template]
    return docs[0][1]["uid"], docs


class Timed:
    """A writer that records when each run's stop returned (the run complete in Tiled).

    Also when the spool's forwarder handed it the stop (``stop_begin``): stop -> complete
    splits into the wait in the spool's queue (behind other runs' documents) and the stop's
    own write (the data cached until the stop, the stop metadata, the close).
    """

    def __init__(self, writer: Any, done: dict[str, float], spent: dict[str, float],
                 stop_begin: dict[str, float] | None = None) -> None:
        self.writer, self.done, self.spent = writer, done, spent
        self.stop_begin = {} if stop_begin is None else stop_begin
        self.run: str | None = None  # one writer per run (the spool makes one per start)

    def __call__(self, name: str, doc: dict) -> None:
        t0 = time.perf_counter()
        if name == "stop":
            self.stop_begin[doc["run_start"]] = t0
        self.writer(name, doc)
        now = time.perf_counter()
        if name == "start":
            self.run = doc["uid"]
        if self.run is not None:
            self.spent[self.run] = self.spent.get(self.run, 0.0) + now - t0
        if name == "stop":
            self.done[doc["run_start"]] = now


def measure(server: Any, root: Path, raw_t: list, ana_t: list, runs: int, period: float,
            lean: bool, arrays_as_nodes: bool = False) -> dict[str, Any]:
    from bluesky_tiled_plugins.writing.tiled_writer import MAX_ARRAY_SIZE

    from pbi_bluesky.demos.queue import tiled_request_metrics, tiled_request_stats
    from pbi_bluesky.store import Catalog, SpoolSink

    catalog = Catalog(server.uri, api_key=server.api_key, lean_writes=lean)
    done: dict[str, float] = {}
    spent: dict[str, float] = {}
    stop_begin: dict[str, float] = {}

    def factory(composed: bool) -> Timed:
        # None: the session's layout (composed: curves in the table)
        size = MAX_ARRAY_SIZE if composed and arrays_as_nodes else None
        return Timed(catalog.writer(composed=composed, max_array_size=size), done, spent,
                     stop_begin)

    raw = SpoolSink(root / "raw", functools.partial(factory, False),
                    delete_partial=catalog.delete_partial)
    ana = SpoolSink(root / "analysis", functools.partial(factory, True),
                    delete_partial=catalog.delete_partial)
    _ = catalog.runs  # connect before the counters are read
    before = tiled_request_metrics(server.uri, server.api_key)
    stops: dict[str, tuple[str, float]] = {}
    backlog: list[int] = []
    t0 = time.perf_counter()
    for i in range(runs):
        for kind, sink, template in (("raw", raw, raw_t), ("analysis", ana, ana_t)):
            uid, docs = fresh_copy(template)
            for name, doc in docs:
                sink(name, doc)
            stops[uid] = (kind, time.perf_counter())
        backlog.append(sum(u not in done for u in stops))  # stopped, not complete
        time.sleep(max(0.0, t0 + (i + 1) * period - time.perf_counter()))
    ok = raw.flush(300) and ana.flush(300)
    wall = time.perf_counter() - t0
    after = tiled_request_metrics(server.uri, server.api_key)
    raw.close()
    ana.close()
    name = ("lean" if lean else "default") + (", curves as array nodes" if arrays_as_nodes
                                                  else "")
    out: dict[str, Any] = {"writer": name, "flushed": ok,
                           "wall_s": round(wall, 1), "max_runs_behind": max(backlog),
                           "runs_behind_at_end_of_tray": backlog[-1]}
    for kind in ("raw", "analysis"):
        uids = [u for u, (k, _) in stops.items() if k == kind]
        lat = [done[u] - stops[u][1] for u in uids if u in done]
        waited = [stop_begin[u] - stops[u][1] for u in uids if u in done]
        wrote = [done[u] - stop_begin[u] for u in uids if u in done]
        out[kind] = {"complete": len(lat), "of": len(uids),
                     "stop_to_complete_median_s": _median(lat),
                     "stop_to_complete_p95_s": _p95(lat),
                     "stop_queued_median_s": _median(waited), "stop_queued_p95_s": _p95(waited),
                     "stop_write_median_s": _median(wrote), "stop_write_p95_s": _p95(wrote),
                     "writer_ms_per_run": round(1000 * statistics.mean(
                         spent[u] for u in uids if u in spent), 1)}
    stats = tiled_request_stats(before, after, 2 * runs)
    by_method: dict[str, float] = {}
    for key, v in stats["by_endpoint"].items():
        method = key.split(" ", 1)[0]
        by_method[method] = by_method.get(method, 0) + v["requests"]
    out["write_requests_per_run"] = stats["write_requests_per_run"]
    out["write_ms_each"] = stats["write_ms_each"]
    out["requests_per_run_by_method"] = {m: round(n / (2 * runs), 2)
                                         for m, n in sorted(by_method.items())}
    out["by_endpoint"] = stats["by_endpoint"]
    # the same data in Tiled: every run there, with its stop document
    runs_c = catalog.runs
    missing = [u for u in stops if u not in runs_c or
               "stop" not in (runs_c[u].metadata or {})]
    out["runs_missing_in_tiled"] = len(missing)
    # where the curves are, read back by the readers' function (store.analysis_frames)
    from pbi_bluesky.store import analysis_frames

    last = [u for u, (k, _) in stops.items() if k == "analysis"][-1]
    frames = analysis_frames(runs_c[last]["pbi_anomaly"])
    out["analysis_curves_layout"] = frames.layout
    out["analysis_curves_read"] = None if frames.curves is None else list(
        frames.curves["intensity"].shape)
    return out


def main(argv: list[str] | None = None) -> int:
    from pbi_bluesky.testing.services import TiledServer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="raw and analysis runs each")
    ap.add_argument("--period", type=float, default=0.3,
                    help="seconds between slots (one raw and one analysis run each)")
    ap.add_argument("--lean", action="store_true",
                    help="also measure the lean writer, after the default one")
    ap.add_argument("--only-lean", action="store_true",
                    help="measure only the lean writer (the session's: Catalog's default), "
                         "e.g. for a long tray")
    ap.add_argument("--arrays-as-nodes", action="store_true",
                    help="also measure the lean writer with the analysis curves as array "
                         "nodes (the layout of older versions) instead of table columns")
    args = ap.parse_args(argv)
    ana_t, raw_t = analysis_template(), raw_template()
    print(f"analysis run: {[n for n, _ in ana_t]}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        server = TiledServer(Path(tmp) / "tiled").start()
        try:
            kinds = ([] if args.only_lean else [(False, False)]) + \
                [(True, False)] * (args.lean or args.only_lean) + \
                [(True, True)] * args.arrays_as_nodes
            for lean, as_nodes in kinds:
                r = measure(server, Path(tmp) / f"spool-{int(lean)}{int(as_nodes)}", raw_t,
                            ana_t, args.runs, args.period, lean, as_nodes)
                results.append(r)
                print(f"{r['writer']}: {r['write_requests_per_run']} write requests per run "
                      f"({r['requests_per_run_by_method']}) at {r['write_ms_each']} ms; "
                      f"analysis stop->complete p95 {r['analysis']['stop_to_complete_p95_s']}"
                      f" s (queued {r['analysis']['stop_queued_p95_s']} s, stop written "
                      f"{r['analysis']['stop_write_p95_s']} s), raw "
                      f"{r['raw']['stop_to_complete_p95_s']} s; writer "
                      f"{r['analysis']['writer_ms_per_run']} / {r['raw']['writer_ms_per_run']}"
                      f" ms per analysis / raw run; at most {r['max_runs_behind']} runs behind")
        finally:
            server.stop()
    print(json.dumps({"runs": args.runs, "period_s": args.period, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
