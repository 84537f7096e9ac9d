"""Where the Tiled server's time goes (issue 22 item 1, measured): the bench reads the
server's own Prometheus counters before and after a tray and reports write and read
requests per run written and ms each; here the arithmetic on two snapshots, and the real
counters of a real Tiled server that one client request moves."""

from __future__ import annotations

from pbi_bluesky.demos.queue import tiled_request_metrics, tiled_request_stats


def test_stats_between_two_snapshots():
    before = {("GET", "search"): [10.0, 1.0], ("POST", "metadata"): [2.0, 0.2]}
    after = {("GET", "search"): [14.0, 1.4], ("POST", "metadata"): [12.0, 1.2],
             ("PATCH", "table"): [5.0, 2.5], ("GET", "about"): [1.0, 0.1]}
    stats = tiled_request_stats(before, after, runs=5)
    assert stats["write_requests"] == 15 and stats["write_requests_per_run"] == 3.0
    assert stats["write_ms_each"] == round(1000 * 3.5 / 15, 2)  # (1.0 + 2.5) s / 15
    assert stats["read_requests"] == 5 and stats["read_ms_each"] == 100.0
    assert "GET about" in stats["by_endpoint"]
    assert stats["by_endpoint"]["PATCH table"] == {"requests": 5, "ms_each": 500.0}
    assert list(stats["by_endpoint"])[0] == "POST metadata"  # most requests first


def test_real_server_counters_move_with_requests(tmp_path):
    from pbi_bluesky.store import open_runs
    from pbi_bluesky.testing.services import TiledServer

    with TiledServer(tmp_path / "tiled") as server:
        before = tiled_request_metrics(server.uri, server.api_key)
        runs = open_runs(server.uri, api_key=server.api_key)
        list(runs)
        after = tiled_request_metrics(server.uri, server.api_key)
    stats = tiled_request_stats(before, after, runs=1)
    assert stats["read_requests"] >= 2 and stats["read_ms_each"] > 0, stats
