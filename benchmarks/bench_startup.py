"""Benchmark start-up: light CLI commands, and the folded operator cold vs cached.

Usage::

    python benchmarks/bench_startup.py [--repeats 3] [--skip-server]

Every figure is the median wall time of ``--repeats`` fresh processes (what a user waits
for), measured here, in this run:

* ``pbi --help`` and ``pbi flagged --help``;
* ``pbi flagged`` on an empty embedded catalog (``--data-dir``; the first call creates it,
  the others reuse it) and, unless ``--skip-server``, against a Tiled server this benchmark
  starts on 127.0.0.1 (``tiled serve catalog --temp``), which is how a beamline runs it;
* the import time of the main subpackages;
* the folded-operator set-up inside a fresh process (after its imports), for a Pilatus 1M
  and an Eiger 4M: cache off (pyFAI build), first build into an empty cache, and warm
  (loaded from the cache) -- plus the time of the first reduced frame after it.

Also counts the third-party INFO lines ``pbi flagged`` prints at the default log level
(goal: none). The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PBI = [sys.executable, "-m", "pbi_bluesky.cli"]
IMPORTS = ("pbi_bluesky.cli", "pbi_bluesky.store", "pbi_bluesky.reduction",
           "pbi_bluesky.models", "pbi_bluesky.live", "tiled.client", "tiled.catalog")

REDUCER_SNIPPET = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from pbi_bluesky.reduction import Reducer, make_geometry
t1 = time.perf_counter()
ai = make_geometry(sys.argv[1], distance_m=3.0, wavelength_angstrom=1.0)
reducer = Reducer(ai, npt=500)
t2 = time.perf_counter()
frame = np.random.default_rng(0).poisson(5.0, reducer.shape).astype(np.int32)
t2b = time.perf_counter()  # (making the test frame is not part of the first frame)
reducer.reduce(frame, monitor=1.0)
t3 = time.perf_counter() - (t2b - t2)
print(json.dumps({"imports_s": t1 - t0, "setup_s": t2 - t1, "first_frame_s": t3 - t2,
                  "cache": reducer._folded.setup_info["cache"]}))
"""


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed, done.stdout, done.stderr


def median_of(cmd: list[str], repeats: int, env=None) -> dict:
    times, err = [], ""
    for _ in range(repeats):
        t, _, err = timed(cmd, env)
        times.append(t)
    chatter = [line for line in err.splitlines()
               if " INFO " in line and " pbi_bluesky" not in line]
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "third_party_info_lines": len(chatter)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_tiled_server(repeats: int) -> dict:
    """``pbi flagged --tiled`` against a real Tiled server started here (always stopped)."""
    port, key = free_port(), secrets.token_hex(16)  # tiled: alphanumeric keys only
    tiled = Path(sys.executable).with_name("tiled")
    log = tempfile.NamedTemporaryFile("w+", prefix="bench-tiled-", suffix=".log")
    # the key travels in the environment, never on a command line (/proc/PID/cmdline)
    server = subprocess.Popen([str(tiled), "serve", "catalog", "--temp",
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "TILED_SINGLE_USER_API_KEY": key})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.3)
        else:
            log.seek(0)
            raise RuntimeError(f"tiled server did not start: {log.read()[-2000:]}")
        cmd = [*PBI, "flagged", "--tiled", f"http://127.0.0.1:{port}"]
        env = {**os.environ, "PBI_TILED_API_KEY": key}  # pbi reads the key there
        timed(cmd, env)  # creates the runs container
        return median_of(cmd, repeats, env)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def reducer_startup(detector: str, repeats: int) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-startup-cache-") as folder:
        cases = (("cache_off", "off"), ("first_build", folder), ("warm", folder))
        for label, value in cases:
            runs = []
            for k in range(1 if label == "first_build" else repeats):
                env = {**os.environ, "PBI_OPERATOR_CACHE": value}
                if label == "first_build" and k == 0:
                    for f in Path(folder).glob("op-*"):
                        f.unlink()
                _, stdout, _ = timed([sys.executable, "-c", REDUCER_SNIPPET, detector], env)
                runs.append(json.loads(stdout.strip().splitlines()[-1]))
            out[label] = {key: (round(statistics.median(r[key] for r in runs), 3)
                                if key != "cache" else runs[-1][key])
                          for key in runs[0]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-server", action="store_true",
                        help="do not start a Tiled server")
    args = parser.parse_args()
    results: dict = {"python": sys.version.split()[0], "cpus": len(os.sched_getaffinity(0)),
                     "load_average": round(os.getloadavg()[0], 2), "cli": {}, "imports_s": {}}
    # numba compiles its kernels once per machine (cached on disk): do it outside timing
    timed([sys.executable, "-c", REDUCER_SNIPPET, "Pilatus100k"],
          {**os.environ, "PBI_OPERATOR_CACHE": "off"})
    results["cli"]["pbi --help"] = median_of([*PBI, "--help"], args.repeats)
    results["cli"]["pbi flagged --help"] = median_of([*PBI, "flagged", "--help"], args.repeats)
    with tempfile.TemporaryDirectory(prefix="bench-startup-catalog-") as data:
        cmd = [*PBI, "flagged", "--data-dir", data]
        results["cli"]["pbi flagged (embedded, first call)"] = median_of(cmd, 1)
        results["cli"]["pbi flagged (embedded)"] = median_of(cmd, args.repeats)
    if not args.skip_server:
        results["cli"]["pbi flagged --tiled (server)"] = with_tiled_server(args.repeats)
    for module in IMPORTS:
        t = [timed([sys.executable, "-c", f"import {module}"])[0] for _ in range(args.repeats)]
        results["imports_s"][module] = round(statistics.median(t), 3)
    base = [timed([sys.executable, "-c", "pass"])[0] for _ in range(args.repeats)]
    results["imports_s"]["(python itself)"] = round(statistics.median(base), 3)
    results["reducer"] = {det: reducer_startup(det, args.repeats)
                          for det in ("Pilatus1M", "Eiger4M")}
    results["goal"] = "light commands well under 2 s; no third-party INFO lines"

    print(f"{'command':<40} {'median s':>9} {'min s':>7} {'3rd-party INFO':>15}")
    for name, r in results["cli"].items():
        print(f"{name:<40} {r['median_s']:>9.2f} {r['min_s']:>7.2f} "
              f"{r['third_party_info_lines']:>15}")
    print()
    for name, t in results["imports_s"].items():
        print(f"import {name:<33} {t:>9.2f} s")
    print()
    for det, cases in results["reducer"].items():
        for label, r in cases.items():
            print(f"{det:<10} operator {label:<12} set-up {r['setup_s']:6.2f} s, first frame "
                  f"{r['first_frame_s'] * 1e3:6.1f} ms (imports {r['imports_s']:.2f} s, "
                  f"cache {r['cache']})")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
