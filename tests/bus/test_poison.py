"""Issue 20: one poison frame goes to the dead letters with its reason; the innocent frames
of its batch are scored (driven directly: a real Redis, the real scorer, no processes).

The poison is injected: a frame scorer that fails (or "dies", raising past every handler
as a killed process would stop) on one frame, whatever batch it is in."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from pbi_bluesky.bus import SCORER_GROUP, BusNames, Scorer, connect, decode_result
from pbi_bluesky.scoring.engine import FrameScorer
from tests.bus.bus_parts import dispatch, publish, wait_until
from tests.bus.runs import sample_md, shots
from tests.live.docs import run_docs

FRAMES = 6
POISON = 3


class _Died(BaseException):
    """What a killed worker does: nothing after this point (no error noted, no ack)."""


def _poisoned(core_kwargs, error: type[BaseException]) -> FrameScorer:
    class Poisoned(FrameScorer):
        def process(self, frames):
            if any(f.parts.seq_num == POISON for f in frames):
                raise error(f"the reader crashed on frame {POISON}")
            return super().process(frames)

    return Poisoned(**core_kwargs)


@pytest.fixture()
def run_on_bus(redis_server, bus_instrument, bus_files, core_kwargs, tmp_path):
    names = BusNames(f"poison-{uuid.uuid4().hex[:8]}")
    client = connect(redis_server.url)
    uid, docs = run_docs(sample_md(bus_files["poni_text"], sample="poison"),
                         shots(bus_instrument, np.random.default_rng(3), FRAMES))
    publish(redis_server.url, names.beamline, docs, tmp_path / "o")
    assert dispatch(client, names, FrameScorer(**core_kwargs)) == len(docs)
    assert client.xlen(names.frames) == FRAMES
    return client, names, uid


def _results(client, names, uid) -> dict[int, object]:
    return {int(k.decode().rsplit("/", 1)[1]): decode_result(v).get("result")
            for k, v in client.hgetall(names.run_results(uid)).items()}


def _assert_only_the_poison_is_dead(client, names, uid, error_text: str) -> None:
    results = _results(client, names, uid)
    assert sorted(results) == list(range(1, FRAMES + 1))
    failed = {s: r for s, r in results.items() if r.status == "failed"}
    assert sorted(failed) == [POISON], {s: r.reason for s, r in failed.items()}
    assert "dead-lettered" in failed[POISON].reason and error_text in failed[POISON].reason
    dead = client.xrange(names.dead)
    assert [f[b"key"].decode() for _i, f in dead] == [f"primary/{POISON}"]
    assert client.xpending(names.frames, SCORER_GROUP)["pending"] == 0


def test_a_frame_that_fails_its_batch_is_dead_lettered_alone(run_on_bus, core_kwargs):
    """Old code: the batch's exception was noted on all 6 items, all redelivered together
    and all 6 dead-lettered."""
    client, names, uid = run_on_bus
    scorer = Scorer(client, names, _poisoned(core_kwargs, RuntimeError), "s1", batch_size=8,
                    claim_idle_s=0.2, max_deliveries=2)
    scorer.join()
    wait_until(lambda: client.hlen(names.run_results(uid)) == FRAMES, 30,
               lambda: scorer.step(block_ms=50), "not every frame has a result")
    _assert_only_the_poison_is_dead(client, names, uid,
                                    f"RuntimeError: the reader crashed on frame {POISON}")
    assert scorer.stats["scored"] == FRAMES - 1 and scorer.stats["dead"] == 1, scorer.stats


def test_a_frame_that_kills_its_workers_is_dead_lettered_alone(run_on_bus, core_kwargs):
    """A worker died holding a batch with the poison frame in it; the next workers reclaim
    the batch and the poison kills each of them. Old code: they reclaimed the 6 items
    together, died together, and all 6 went to the dead letters."""
    client, names, uid = run_on_bus
    # the first worker read the whole batch and died before acknowledging any of it
    client.xgroup_createconsumer(names.frames, SCORER_GROUP, "ghost")
    assert len(client.xreadgroup(SCORER_GROUP, "ghost", {names.frames: ">"},
                                 count=8)[0][1]) == FRAMES
    core = _poisoned(core_kwargs, _Died)
    deaths = 0
    while client.hlen(names.run_results(uid)) < FRAMES:
        assert deaths <= 4, f"{deaths} workers died and the frames are still not done"
        scorer = Scorer(client, names, core, f"w{deaths}", batch_size=8, claim_idle_s=0.2,
                        max_deliveries=3)
        scorer.join()
        try:
            wait_until(lambda: client.hlen(names.run_results(uid)) == FRAMES, 30,
                       lambda s=scorer: s.step(block_ms=50), "frames left unscored")
        except _Died:
            deaths += 1
    assert deaths == 2  # delivered 4 times (the ghost, two deaths, then dead-lettered)
    _assert_only_the_poison_is_dead(client, names, uid, "none recorded: a worker died")
