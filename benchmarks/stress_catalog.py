"""Stress a Tiled catalog the way a session uses it: writer threads plus a reader, at once.

Usage::

    python benchmarks/stress_catalog.py [--target embedded|server] [--tables duckdb|sqlite]
        [--unserialised] [--runs 25] [--writers 2] [--timeout 240]

Each writer thread writes ``--runs`` small runs (start, descriptor, 3 events with a scalar
and an array, stop) through ``TiledWriter`` with its own client, the way the raw and the
analysis spools of a session do; a reader thread reads the newest runs' event tables while
they write. ``--target embedded`` uses the in-process catalog of
:func:`pbi_bluesky.store.embedded_client` (``--unserialised`` removes its one-request-at-a-
time transport, to see what Tiled does without it); ``--target server`` starts
``tiled serve catalog`` with the event tables in ``--tables``.

Reported: runs written, request errors (first few), and whether a thread was still blocked
in a request after ``--timeout`` seconds (``hung``). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _write_run(runs, k: int, i: int) -> None:
    import numpy as np
    from bluesky_tiled_plugins import TiledWriter
    from event_model import compose_run

    writer = TiledWriter(runs)
    bundle = compose_run(metadata={"writer": k, "n": i})
    writer("start", bundle.start_doc)
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "x": {"dtype": "number", "shape": [], "source": "sim"},
        "y": {"dtype": "array", "shape": [50], "source": "sim"}})
    writer("descriptor", desc.descriptor_doc)
    for j in range(3):
        now = time.time()
        writer("event", desc.compose_event(data={"x": float(j), "y": np.arange(50.0).tolist()},
                                           timestamps={"x": now, "y": now}))
    writer("stop", bundle.compose_stop())


def _clients(args, root: Path, n: int) -> tuple[list, object | None]:
    from pbi_bluesky.store import open_runs

    if args.target == "server":
        from pbi_bluesky.testing.services import TiledServer

        tables = (f"duckdb:///{root / 'tables.duckdb'}" if args.tables == "duckdb"
                  else f"sqlite:///{root / 'tables.sqlite'}")
        server = TiledServer(root / "server", tables=tables).start()
        return [open_runs(server.uri, api_key=server.api_key) for _ in range(n)], server
    if args.tables != "duckdb":
        raise SystemExit("--target embedded keeps its DuckDB tables (pbi_bluesky.store)")
    clients = [open_runs(data_dir=root) for _ in range(n)]
    if args.unserialised:
        for runs in clients:
            cached = runs.context.http_client._transport
            cached.transport = cached.transport.transport  # unwrap _OneAtATime
    return clients, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", choices=("embedded", "server"), default="embedded")
    ap.add_argument("--tables", choices=("duckdb", "sqlite"), default="duckdb")
    ap.add_argument("--unserialised", action="store_true")
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=240.0)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="pbi-stress-"))
    clients, server = _clients(args, root, args.writers + 1)
    written = [0] * args.writers
    errors: list[str] = []
    done = threading.Event()

    def write(k: int) -> None:
        for i in range(args.runs):
            try:
                _write_run(clients[k], k, i)
                written[k] += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"writer {k} run {i}: {type(exc).__name__}: {exc}"[:240])

    def read() -> None:
        reader = clients[-1]
        while not done.is_set():
            try:
                for uid in list(reader)[-2:]:
                    reader[uid]["primary"].read()
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"reader: {type(exc).__name__}: {exc}"[:240])
            time.sleep(0.05)

    t0 = time.perf_counter()
    writers = [threading.Thread(target=write, args=(k,), daemon=True)
               for k in range(args.writers)]
    reader = threading.Thread(target=read, daemon=True)
    for t in (*writers, reader):
        t.start()
    deadline = time.monotonic() + args.timeout
    for t in writers:
        t.join(max(0.0, deadline - time.monotonic()))
    done.set()
    reader.join(max(1.0, deadline - time.monotonic()))
    hung = any(t.is_alive() for t in (*writers, reader))
    seconds = time.perf_counter() - t0
    if server is not None:
        server.stop()
    result = {"target": args.target, "tables": args.tables,
              "serialised": args.target == "embedded" and not args.unserialised,
              "writers": args.writers, "runs_asked": args.runs * args.writers,
              "runs_written": sum(written), "errors": len(errors), "hung": hung,
              "seconds": round(seconds, 1), "first_errors": errors[:3]}
    for e in errors[:5]:
        print(" ", e)
    print(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # a thread still blocked in the in-process app must not keep us alive


if __name__ == "__main__":
    main()
