"""The agent's records (issue 20, smaller items): a retried write leaves one record, with
its stop, not a second start; ``pbi rescore`` skips the agent's request records."""

from __future__ import annotations

import httpx
import numpy as np

from pbi_bluesky.agent.records import REQUEST, RecordWriter
from pbi_bluesky.store import Catalog


class StopFailsOnce:
    """The catalog's real ``TiledWriter``, whose first stop is lost on the way (the start
    reached Tiled, the connection dropped before the stop did)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog, self.failed = catalog, 0

    def __call__(self) -> object:
        real = self.catalog_writer()

        def writer(name: str, doc: dict) -> object:
            if name == "stop" and not self.failed:
                self.failed += 1
                raise httpx.ReadTimeout("the stop never arrived")
            return real(name, doc)

        return writer


def _request(writer: RecordWriter) -> str:
    return writer.request(rescan_of="raw-1", round=1, request_uid="req-1", item_uid="item-1",
                          slot=3, sample="N50-a", policy={"rounds": 2}, position="back")


def test_a_retried_record_is_written_once_with_its_stop(tmp_path):
    from tiled.queries import Key

    catalog = Catalog(None, data_dir=tmp_path)
    flaky = StopFailsOnce(catalog)
    flaky.catalog_writer = catalog.writer
    catalog.writer = flaky
    uid = _request(RecordWriter(catalog))
    assert flaky.failed == 1  # the failure happened and the write was retried
    runs = catalog.runs
    records = runs.search(Key("purpose") == REQUEST)
    assert list(records) == [uid]  # one record, not a second start with a new uid
    md = records[uid].metadata
    assert md["start"]["request_uid"] == "req-1"
    assert md["stop"]["exit_status"] == "success"


def test_rescore_skips_the_agents_request_records(tmp_path):
    from bluesky_tiled_plugins import TiledWriter

    from pbi_bluesky.rescore import select_runs
    from tests.live.docs import feed, run_docs

    catalog = Catalog(None, data_dir=tmp_path)
    rng = np.random.default_rng(1)
    raw_uid, docs = run_docs({"sample": "x"},
                             [(rng.integers(0, 9, (8, 8), dtype=np.int32), 1e6, 0.7)])
    feed(TiledWriter(catalog.runs), docs)
    request_uid = _request(RecordWriter(catalog))
    selected = [uid for uid, _start in select_runs(catalog.runs)]
    assert request_uid in list(catalog.runs)
    assert selected == [raw_uid]


def test_a_rescore_jobs_repr_has_no_api_key():
    from pbi_bluesky.rescore import RescoreJob

    job = RescoreJob("model", "http://127.0.0.1:1/api/v1", "k3ysecret0", {"npt": 10})
    assert "k3ysecret0" not in repr(job) and "k3ysecret0" not in str(job)
    assert "k3ysecret0" not in job.key
    assert job.api_key == "k3ysecret0"
