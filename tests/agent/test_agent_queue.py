"""The agent (`pbi agent`, its own process) beside a real queue server (start-re-manager
running the profile, real Redis, real Tiled) and the sim IOC: a flagged sample gets exactly
one rescan item, whose verdict decides confirmed or transient; a killed and restarted agent
queues no second rescan; a plan failing in the queue, or the queue server restarting, leaves
the agent working.

Test slots: 1 normal, 2 contaminated, 8 degraded (always flagged), 11 a one-shot beam dump
(flagged once, clean when rescanned); 0 the empty cell. Every test follows only the analyses
made since it started (``--since``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.queue_fixtures import history, idle, measure_items, queue, wait_for

pytestmark = pytest.mark.e2e

TIMEOUT = 120.0


def _agent(stack, tmp_path, since, name="agent"):
    from pbi_bluesky.demos.queue import AgentProcess

    agent = AgentProcess(stack, tmp_path / name, poll_s=0.3, since=since).start()
    agent.wait_running()
    return agent


def _agent_items(stack, since):
    """The agent's items in the queue history since ``since``, by flagged raw uid."""
    out: dict[str, list[dict]] = {}
    for item in history(stack):
        meta = (item.get("meta") or {}).get("pbi_agent")
        if meta and item["result"]["time_start"] >= since:
            out.setdefault(meta["rescan_of"], []).append(item)
    return out


def _survey(stack, since):
    """Slot -> finished survey analysis (pbi_bluesky.agent.AnalysisResult) since ``since``."""
    from pbi_bluesky.demos.queue import analysis_results

    return {r.slot: r for r in analysis_results(stack.runs(), purpose="survey")
            if r.time >= since}


def _decisions(stack):
    from pbi_bluesky.store.queries import decisions_of

    return decisions_of(stack.runs())


def _decided(stack, since, slots):
    survey = _survey(stack, since)
    decided = _decisions(stack)
    if all(s in survey and survey[s].raw_uid in decided for s in slots):
        return {s: decided[survey[s].raw_uid] for s in slots}
    return None


def test_flagged_samples_get_one_rescan_each_and_are_decided(queue_stack, tmp_path):
    stack, t0 = queue_stack, time.time()
    agent = _agent(stack, tmp_path, t0)
    try:
        queue(stack, measure_items(stack, [0, 1, 8, 11], md={"test": "decide"}))
        decided = wait_for(lambda: idle(stack) and _decided(stack, t0, [8, 11]), TIMEOUT,
                           "decisions on slots 8 and 11", agent.log_tail)
        assert agent.alive()
    finally:
        agent.stop()
    survey = _survey(stack, t0)
    assert not survey[1].is_flagged and survey[8].is_flagged and survey[11].is_flagged
    assert decided[8]["classification"] == "confirmed", decided[8]
    assert decided[11]["classification"] == "transient", decided[11]  # the beam dump
    items = _agent_items(stack, t0)
    assert set(items) == {survey[8].raw_uid, survey[11].raw_uid}  # nothing for 0 and 1
    assert all(len(v) == 1 for v in items.values()), items  # exactly one rescan each
    runs = stack.runs()
    for slot in (8, 11):
        (item,) = items[survey[slot].raw_uid]
        assert item["name"] == "rescan" and item["user_group"] == "agent"
        assert item["result"]["exit_status"] == "completed"
        (rescan_uid,) = item["result"]["run_uids"]
        start = runs[rescan_uid].metadata["start"]
        assert start["rescan_of"] == survey[slot].raw_uid and start["purpose"] == "rescan"
        raw_start = runs[survey[slot].raw_uid].metadata["start"]
        assert start["exposure_s"] == 2 * raw_start["exposure_s"]  # policy: exposure_factor
        # the decision links both raw runs and both analysis runs, which exist
        record = decided[slot]
        assert record["raw_uids"] == [survey[slot].raw_uid, rescan_uid]
        assert record["analysis_uids"][0] == survey[slot].analysis_uid
        for uid in record["analysis_uids"]:
            assert runs[uid].metadata["start"]["pbi_analysis"]
        assert record["item_uids"] == [item["item_uid"]]
    # requests recorded in Tiled too (the agent's memory besides the queue)
    from tiled.queries import Comparison, Key

    requests = runs.search(Key("purpose") == "pbi_agent_request").search(
        Comparison("ge", "start.time", t0))
    assert sorted(n.metadata["start"]["rescan_of"] for _, n in requests.items()) == sorted(
        items)
    # queryable from the command line
    env = {**stack.agent_env(), "PBI_TILED_API_KEY": stack.tiled.api_key}
    out = subprocess.run([sys.executable, "-m", "pbi_bluesky.cli", "catalog", "flagged", "--tiled",
                          stack.tiled.uri, "--decision", "confirmed", "--since",
                          _iso(t0), "--json"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert [r["raw_uid"] for r in rows] == [survey[8].raw_uid]
    assert rows[0]["decision"] == "confirmed" and rows[0]["decision_uid"]


def _iso(t):
    from datetime import datetime

    return datetime.fromtimestamp(t).isoformat()


def test_agent_killed_and_restarted_mid_tray_queues_no_second_rescan(queue_stack, tmp_path):
    stack, t0 = queue_stack, time.time()
    agent = _agent(stack, tmp_path, t0, "first")
    queue(stack, measure_items(stack, [8, 1], md={"test": "restart"}))

    def first_rescan():  # an agent item for this test's slot 8, pending, running or done
        slot8 = _survey(stack, t0).get(8)
        return slot8 and any((item.get("meta") or {}).get("pbi_agent", {}).get("rescan_of")
                             == slot8.raw_uid for item in _all_items(stack))

    wait_for(first_rescan, TIMEOUT, "the agent's first rescan item", agent.log_tail)
    agent.kill()  # SIGKILL right after it queued (its request record may be unwritten)
    # the queue goes on without it; slot 2 is measured and flagged while it is dead
    queue(stack, measure_items(stack, [2], md={"test": "restart"}))
    wait_for(lambda: idle(stack) and 2 in _survey(stack, t0), TIMEOUT, "slot 2 measured")
    again = _agent(stack, tmp_path, t0, "second")
    try:
        decided = wait_for(lambda: idle(stack) and _decided(stack, t0, [8, 2]), TIMEOUT,
                           "decisions on slots 8 and 2", again.log_tail)
        time.sleep(2.0)  # a few more polls: nothing more may be queued
        assert again.alive()
        assert again.status()["rescans_queued"] == 1, again.log_tail()  # slot 2 only
    finally:
        again.stop()
    survey = _survey(stack, t0)
    items = _agent_items(stack, t0)
    logs = agent.log_tail() + "\n---- restarted ----\n" + again.log_tail()
    assert {k: len(v) for k, v in items.items()} == {survey[8].raw_uid: 1,
                                                      survey[2].raw_uid: 1}, logs
    assert decided[8]["classification"] == decided[2]["classification"] == "confirmed"
    assert len([d for d in _decisions(stack).values() if d["raw_uid"] in items]) == 2


def _all_items(stack):
    api = stack.api()
    try:
        q = api.queue_get()
    finally:
        api.close()
    running = [q["running_item"]] if q.get("running_item") else []
    return [*q["items"], *running, *history(stack)]


def test_a_plan_failing_in_the_queue_leaves_the_agent_running(queue_stack, tmp_path):
    from bluesky_queueserver_api import BPlan

    stack, t0 = queue_stack, time.time()
    agent = _agent(stack, tmp_path, t0)
    try:
        # a slot the session's sample list does not know: the plan raises in the worker
        queue(stack, [BPlan("measure_tray", ["saxs", "i0", "transmission"], "changer", [42],
                            0.1)])
        wait_for(lambda: history(stack)[-1]["result"]["exit_status"] == "failed" and
                 idle_or_stopped(stack), 60, "the failing item")
        assert "42" in history(stack)[-1]["result"]["msg"]
        steps = agent.status()["steps"]
        wait_for(lambda: agent.status()["steps"] > steps + 2, 30, "the agent polling on")
        assert agent.alive()
        # the person restarts the queue; the agent still rescans what is flagged
        api = stack.api()
        try:
            api.queue_clear()
            queue(stack, measure_items(stack, [8], md={"test": "failure"}))
        finally:
            api.close()
        decided = wait_for(lambda: idle(stack) and _decided(stack, t0, [8]), TIMEOUT,
                           "a decision on slot 8", agent.log_tail)
        assert decided[8]["classification"] == "confirmed"
        assert agent.alive()
    finally:
        agent.stop()


def idle_or_stopped(stack):
    api = stack.api()
    try:
        return api.status()["manager_state"] == "idle"
    finally:
        api.close()


def test_agent_survives_a_queue_server_restart(queue_stack, tmp_path):
    stack, t0 = queue_stack, time.time()
    agent = _agent(stack, tmp_path, t0)
    try:
        before = len(history(stack))
        stack.manager.kill()  # the RE Manager and its worker die
        wait_for(lambda: agent.status().get("queue_reachable") is False, 30,
                 "the agent noticing", agent.log_tail)
        stack.manager.start()
        stack.manager.open_environment()
        assert len(history(stack)) == before  # the queue's history lives in Redis
        assert agent.alive()
        queue(stack, measure_items(stack, [2], md={"test": "qs restart"}))
        decided = wait_for(lambda: idle(stack) and _decided(stack, t0, [2]), TIMEOUT,
                           "a decision on slot 2", agent.log_tail)
        assert decided[2]["classification"] == "confirmed"
        assert agent.status()["queue_reachable"] is True
    finally:
        agent.stop()
    assert os.path.exists(agent.log_path)
