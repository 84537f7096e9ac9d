"""The bus publisher's send rate against a plain pipelined ``XADD`` of the same documents.

:class:`~pbi_bluesky.bus.publisher.BusPublisher` sends each batch through one Lua script
that skips the records the broker already took from it (exactly once, issue 20). The
baseline, measured in the same run on the same Redis, is what the publisher did before
that: encode each document and ``XADD`` it in a non-transactional pipeline (at least once).
Each repeat publishes one run of ``--events`` small event documents (frames by reference
carry no arrays) and times until the publisher is closed (everything on the broker).
Ends with one JSON line.

    python benchmarks/bench_publisher.py [--events 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


def _run_docs(events: int) -> list[tuple[str, dict[str, Any]]]:
    uid, desc, now = uuid.uuid4().hex, uuid.uuid4().hex, time.time()
    docs: list[tuple[str, dict[str, Any]]] = [
        ("start", {"uid": uid, "time": now}),
        ("descriptor", {"uid": desc, "run_start": uid, "name": "primary", "data_keys": {},
                        "time": now})]
    docs += [("event", {"uid": uuid.uuid4().hex, "descriptor": desc, "seq_num": i + 1,
                        "time": now, "data": {"I0": 1.0e6 + i, "transmission": 0.61},
                        "timestamps": {"I0": now, "transmission": now}})
             for i in range(events)]
    docs.append(("stop", {"uid": uuid.uuid4().hex, "run_start": uid, "time": now,
                          "exit_status": "success"}))
    return docs


def _publisher(url: str, beamline: str, outbox: Path, docs: list) -> float:
    from pbi_bluesky.bus.publisher import BusPublisher

    pub = BusPublisher(url, beamline, outbox_dir=outbox)
    t0 = time.perf_counter()
    for name, doc in docs:
        pub(name, doc)
    if not pub.close(120):
        raise RuntimeError("the publisher did not drain in 120 s")
    return len(docs) / (time.perf_counter() - t0)


def _pipeline(client: Any, stream: str, docs: list, batch: int = 256) -> float:
    from pbi_bluesky.codec import encode

    t0 = time.perf_counter()
    run = docs[0][1]["uid"]
    for i in range(0, len(docs), batch):
        pipe = client.pipeline(transaction=False)
        for name, doc in docs[i:i + batch]:
            pipe.xadd(stream, {"run": run, "name": name, "doc": encode(doc)})
        pipe.execute()
    return len(docs) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    import redis

    from pbi_bluesky.testing.services import RedisServer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=3000, help="event documents per run")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    out: dict[str, list[float]] = {"publisher": [], "pipelined_xadd": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            client = redis.Redis.from_url(server.url)
            for k in range(args.repeats):
                docs = _run_docs(args.events)
                out["publisher"].append(_publisher(server.url, f"bench{k}",
                                                   Path(tmp) / f"outbox{k}", docs))
                out["pipelined_xadd"].append(_pipeline(client, f"baseline{k}.documents",
                                                       _run_docs(args.events)))
        finally:
            server.stop()
    med = {k: statistics.median(v) for k, v in out.items()}
    print(f"publisher (exactly once): {med['publisher']:.0f} documents/s; pipelined XADD "
          f"(at least once, the earlier way): {med['pipelined_xadd']:.0f} documents/s "
          f"(median of {args.repeats})")
    print(json.dumps({"benchmark": "bench_publisher", "events": args.events,
                      "repeats": args.repeats, "docs_per_s": {k: [round(x) for x in v]
                                                              for k, v in out.items()},
                      "median_docs_per_s": {k: round(v) for k, v in med.items()},
                      "publisher_over_pipeline": round(med["publisher"]
                                                       / med["pipelined_xadd"], 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
