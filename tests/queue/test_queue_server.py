"""start-re-manager runs the profile's startup file (the one `pbi ipython` runs) against
beamline.yaml, with a real Redis; its plans and devices are allowed, `qserver` and
bluesky-queueserver-api add and run them, and the runs are scored and land in Tiled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.beamline_fixtures import REPO_ROOT
from tests.queue_fixtures import DETECTORS, history, idle, queue, wait_for

PROFILE = REPO_ROOT / "profiles" / "profile_saxs"


def test_profile_plans_and_devices_are_allowed(queue_stack):
    api = queue_stack.api()
    try:
        status = api.status()
        plans = api.plans_allowed()["plans_allowed"]
        devices = api.devices_allowed()["devices_allowed"]
        agent_plans = api.plans_allowed(user_group="agent")["plans_allowed"]
    finally:
        api.close()
    assert status["worker_environment_exists"] and status["re_state"] == "idle"
    assert {"measure_tray", "measure_normals", "rescan", "fly_slot"} <= set(plans)
    assert "survey_and_rescan" not in plans  # needs a live object: refused by permissions
    assert set(agent_plans) == {"rescan"}  # the agent may only queue rescans
    assert set(DETECTORS) | {"changer"} <= set(devices)
    # the device parameters name the beamline's devices (annotations the server read)
    detectors = next(p for p in plans["rescan"]["parameters"] if p["name"] == "detectors")
    assert set(DETECTORS) <= set(detectors["annotation"]["devices"]["Readable"])
    # the list of existing plans/devices was written in the stack's folder, not the repo
    assert queue_stack.manager.existing_path.is_file()
    assert not (PROFILE / "startup" / "existing_plans_and_devices.yaml").exists()


@pytest.mark.parametrize("item, group, why", [
    ({"name": "measure_tray", "args": [["saxs", "nosuchdevice"], "changer", [1], 0.1]},
     "primary", "nosuchdevice"),
    ({"name": "measure_tray", "args": [DETECTORS, "saxs", [1], 0.1]}, "primary", "changer"),
    ({"name": "measure_tray", "args": [DETECTORS, "changer", [1], 0.1]}, "agent",
     "measure_tray"),
    ({"name": "survey_and_rescan", "args": [DETECTORS, "changer", [1], 0.1]}, "primary",
     "survey_and_rescan"),
    ({"name": "rescan", "args": [DETECTORS, "changer", 1, "long"]}, "agent", "exposure"),
])
def test_bad_items_are_refused_with_the_reason(queue_stack, item, group, why):
    api = queue_stack.api()
    api.user_group = group
    try:
        with pytest.raises(api.RequestFailedError, match=why):
            api.item_add({"item_type": "plan", **item})
        assert api.queue_get()["items"] == []
    finally:
        api.close()


def _qserver(stack, *args):
    cmd = [str(Path(sys.executable).with_name("qserver")), "--zmq-control-addr",
           stack.zmq_control_addr, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                         env={**os.environ, **stack.manager.client_env()})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_qserver_and_the_api_add_and_run_the_plans(queue_stack):
    from bluesky_queueserver_api import BPlan

    stack = queue_stack
    api = stack.api()
    try:  # held: the item waits in the queue until `qserver queue start`
        api.queue_autostart(False)
        api.queue_clear()
    finally:
        api.close()
    item = {"name": "measure_tray", "args": [DETECTORS, "changer", [1], 0.1],
            "kwargs": {"md": {"operator": "qserver test"}}}
    _qserver(stack, "queue", "add", "plan", json.dumps(item))
    assert "'items_in_queue': 1" in _qserver(stack, "status")
    _qserver(stack, "queue", "start")
    wait_for(lambda: idle(stack) and history(stack)[-1]["name"] == "measure_tray", 60,
             "measure_tray through qserver")
    first = history(stack)[-1]["result"]
    assert first["exit_status"] == "completed", first
    (raw_uid,) = first["run_uids"]
    # a person's rescan of it, through bluesky-queueserver-api
    api = stack.api()
    try:
        response = api.item_add(BPlan("rescan", DETECTORS, "changer", 1, 0.2,
                                      rescan_of=raw_uid))
        assert response["success"], response
        api.queue_start()
    finally:
        api.close()
    wait_for(lambda: idle(stack) and history(stack)[-1]["name"] == "rescan", 60, "rescan")
    second = history(stack)[-1]["result"]
    assert second["exit_status"] == "completed", second
    (rescan_uid,) = second["run_uids"]
    # both runs reached Tiled, carry the tray's description, and were scored live
    from pbi_bluesky.store.queries import analysis_of

    runs = stack.runs()

    def analysed():
        found = [analysis_of(runs, u) for u in (raw_uid, rescan_uid)]
        return all(a is not None and a.metadata.get("stop") for a in found) and found

    analyses = wait_for(analysed, 60, "both analysis runs in Tiled")
    start = runs[raw_uid].metadata["start"]
    assert (start["slot"], start["sample"], start["operator"]) == (1, "N50-a", "qserver test")
    assert "Detector: Pilatus300k" in start["geometry"]  # from beamline.yaml's PONI
    rescan_start = runs[rescan_uid].metadata["start"]
    assert rescan_start["rescan_of"] == raw_uid and rescan_start["exposure_s"] == 0.2
    for analysis in analyses:
        summary = analysis.metadata["stop"]["pbi_summary"]
        assert summary["frames"] == summary["scored"] == 1, summary
        assert summary["verdict"] == "normal", summary  # a normal 50:50 specimen


def test_the_worker_scores_queued_normals_with_a_promoted_model(queue_stack):
    """What ``pbi demo --queue``'s loop relies on: a bundle promoted into the registry that
    the worker's beamline file names scores the next queued run, without a restart; here a
    ``measure_normals`` item (one run per recipe), whose analysis runs name the version."""
    from bluesky_queueserver_api import BPlan

    from pbi_bluesky.models.registry import ModelRegistry
    from pbi_bluesky.store.queries import analysis_of

    stack = queue_stack
    registry = ModelRegistry(stack.config.scorer.registry)
    assert registry.current() is None  # the worker scores with scorer.model until now
    version = registry.promote(stack.config.scorer.model, note="queue test")
    try:
        queue(stack, [BPlan("measure_normals", DETECTORS, "changer", [1, 3], 0.1,
                            md={"operator": "normals test"})])
        wait_for(lambda: idle(stack) and history(stack)[-1]["name"] == "measure_normals",
                 90, "measure_normals through the queue")
    finally:
        registry.rollback()
    result = history(stack)[-1]["result"]
    assert result["exit_status"] == "completed", result
    uids = result["run_uids"]
    runs = stack.runs()
    starts = [runs[u].metadata["start"] for u in uids]
    assert [(s["composition"], s["slots"], s["specimens"], s["purpose"], s["plan_name"])
            for s in starts] == [("50:50", [1], ["N50-a"], "normals", "measure_normals"),
                                 ("0:100", [3], ["PMMA-ref"], "normals", "measure_normals")]

    def analysed():
        found = [analysis_of(runs, u) for u in uids]
        return all(a is not None and a.metadata.get("stop") for a in found) and found

    for analysis in wait_for(analysed, 60, "both analysis runs in Tiled"):
        start = analysis.metadata["start"]
        assert start["model_registry_version"] == version.number, start
        assert start["model_origin"] == "registry"
        assert start["model_sha256"] == version.model_sha256
        assert analysis.metadata["stop"]["pbi_summary"]["scored"] == 1
