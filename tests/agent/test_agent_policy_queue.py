"""The agent's policy against the real queue server and Tiled, step by step: the queue is
held (autostart off) so the agent's items stay pending where the policy put them, and the
analysis runs are documents like the live scorer's (written to the stack's Tiled)."""

from __future__ import annotations

import time

from tests.queue_fixtures import DETECTORS


def _write(runs, metadata, summary=None):
    from bluesky_tiled_plugins import TiledWriter
    from event_model import compose_run

    bundle = compose_run(metadata=metadata)
    writer = TiledWriter(runs)
    writer("start", bundle.start_doc)
    stop = bundle.compose_stop(exit_status="success")
    writer("stop", {**stop, "pbi_summary": summary} if summary else stop)
    return bundle.start_doc["uid"]


def _measurement(runs, slot, sample, flagged, *, sample_type="sample", purpose="survey",
                 extra=None):
    """A raw run and its analysis run, as the session writes them; returns the raw uid."""
    raw = _write(runs, {"slot": slot, "sample": sample, "composition": "50:50",
                        "sample_type": sample_type, "purpose": purpose,
                        "detectors": DETECTORS, "motors": ["changer"], "exposure_s": 0.1,
                        "plan_name": "measure_tray", **(extra or {})})
    _write(runs, {"pbi_analysis": True, "raw_uid": raw, "slot": slot, "sample": sample,
                  "sample_type": sample_type, "purpose": purpose,
                  "expected_composition": "50:50",
                  "rescan_of": (extra or {}).get("rescan_of")},
           {"frames": 1, "scored": 1, "failed": 0, "shed": 0, "flagged": int(flagged),
            "verdict": "anomalous" if flagged else "normal",
            "max_score": 50.0 if flagged else 1.0})
    return raw


def _queue(stack):
    api = stack.api()
    try:
        return api.queue_get()["items"]
    finally:
        api.close()


def _agent(stack, since, **policy):
    from pbi_bluesky.agent import build_agent, load_policy

    return build_agent(zmq_control_addr=stack.zmq_control_addr, tiled_uri=stack.tiled.uri,
                       api_key=stack.tiled.api_key, policy=load_policy(policy), since=since)


def test_policy_position_budget_references_and_restart(queue_stack, monkeypatch):
    from bluesky_queueserver_api import BPlan

    from pbi_bluesky.store.queries import decisions_of

    # the control channel is encrypted: the in-process agent finds the server's public key
    # where `pbi queue agent` does
    monkeypatch.setenv("QSERVER_ZMQ_PUBLIC_KEY", queue_stack.manager.public_key)

    stack = queue_stack
    api = stack.api()
    api.queue_autostart(False)
    api.queue_stop_cancel()
    api.queue_clear()
    assert api.item_add(BPlan("measure_tray", DETECTORS, "changer", [1], 0.1))["success"]
    api.close()
    try:
        runs, t0 = stack.runs(), time.time() - 1.0
        a = _measurement(runs, 3, "S3-policy", True)
        ref = _measurement(runs, 0, "empty cell", True, sample_type="empty_cell",
                           purpose="reference")
        b = _measurement(runs, 5, "S5-policy", True)
        a_again = _measurement(runs, 3, "S3-policy", True)  # same sample, flagged again
        clean = _measurement(runs, 6, "S6-policy", False)
        agent = _agent(stack, t0, position="back", max_rescans=1)
        agent.step()
        agent.step()  # idempotent: nothing more
        items = _queue(stack)
        assert [i["name"] for i in items] == ["measure_tray", "rescan", "rescan"]  # at the back
        by_origin = {i["kwargs"]["rescan_of"]: i for i in items[1:]}
        assert set(by_origin) == {a, b}  # not the reference, not the clean one, one per sample
        item = by_origin[a]
        assert item["user_group"] == "agent" and item["kwargs"]["rescan_round"] == 1
        assert item["args"][:2] == [DETECTORS, "changer"] and item["args"][3] == 0.2
        assert item["args"][2] == {"slot": 3, "sample": "S3-policy", "composition": "50:50",
                                   "sample_type": "sample"}
        meta = item["meta"]["pbi_agent"]
        assert (meta["rescan_of"], meta["round"]) == (a, 1)
        decided = decisions_of(runs)
        assert decided[ref]["classification"] == "skipped"
        assert decided[a_again]["classification"] == "skipped"  # the sample's budget is used
        assert "used" in decided[a_again]["reason"] and clean not in decided
        # a restarted agent (a new process would do the same) adds nothing
        restarted = _agent(stack, t0, position="back", max_rescans=1)
        restarted.step()
        restarted.step()
        assert len(_queue(stack)) == 3
        assert restarted.stats.rescans_queued == 0
        # the rescans' runs (as the queued items would make them) decide
        rescan_md = {"purpose": "rescan", "rescan_round": 1}
        rescan_a = _measurement(runs, 3, "S3-policy", False, purpose="rescan", extra={
            **rescan_md, "rescan_of": a, "pbi_agent": by_origin[a]["meta"]["pbi_agent"]})
        rescan_b = _measurement(runs, 5, "S5-policy", True, purpose="rescan", extra={
            **rescan_md, "rescan_of": b, "pbi_agent": by_origin[b]["meta"]["pbi_agent"]})
        restarted.step()
        decided = decisions_of(runs)
        assert decided[a]["classification"] == "transient"
        assert decided[b]["classification"] == "confirmed"
        assert decided[a]["raw_uids"] == [a, rescan_a] and decided[b]["raw_uids"] == [b,
                                                                                    rescan_b]
        assert decided[a]["item_uids"] == [by_origin[a]["item_uid"]]
        n_decisions = len(decided)
        restarted.step()
        assert len(decisions_of(runs)) == n_decisions  # decided once
        # position "front" (next): before the person's item
        t1 = time.time() - 0.1
        c = _measurement(runs, 7, "S7-policy", True)
        _agent(stack, t1, position="next").step()
        items = _queue(stack)
        assert items[0]["name"] == "rescan" and items[0]["kwargs"]["rescan_of"] == c
    finally:
        api = stack.api()
        api.queue_clear()
        api.close()
