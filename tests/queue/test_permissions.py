"""Least privilege on the queue server (issue 20): the agent's group may queue ``rescan``
only and execute no function; people execute named functions only.

The shipped permissions file is checked with the queue server's own functions, then the real
RE Manager (the session's queue stack) is asked: it refuses what the file forbids."""

from __future__ import annotations

import pytest

from tests.beamline_fixtures import REPO_ROOT
from tests.queue_fixtures import DETECTORS

PERMISSIONS = REPO_ROOT / "profiles" / "profile_saxs" / "user_group_permissions.yaml"

# names in the worker's namespace (the startup file's): none but flush_session is for people
WORKER_NAMES = ["build_session", "pbi", "catalog", "beamline", "flagged_runs", "measure_tray",
                "os", "print", "exec"]


def _permissions() -> dict:
    from bluesky_queueserver.manager.profile_ops import load_user_group_permissions

    return load_user_group_permissions(PERMISSIONS)


def test_no_group_may_execute_every_function():
    groups = _permissions()["user_groups"]
    for name, group in groups.items():
        assert None not in (group.get("allowed_functions") or []), name


@pytest.mark.parametrize("function", [*WORKER_NAMES, "flush_session"])
def test_the_agent_executes_no_function(function):
    from bluesky_queueserver.manager.profile_ops import check_if_function_allowed

    assert not check_if_function_allowed(function, group_name="agent",
                                         user_group_permissions=_permissions())


def test_people_execute_named_functions_only():
    from bluesky_queueserver.manager.profile_ops import check_if_function_allowed

    perms = _permissions()
    assert check_if_function_allowed("flush_session", group_name="primary",
                                     user_group_permissions=perms)
    for function in WORKER_NAMES:
        assert not check_if_function_allowed(function, group_name="primary",
                                             user_group_permissions=perms), function


@pytest.mark.parametrize("group, function", [
    ("agent", "build_session"), ("agent", "flush_session"), ("agent", "pbi"),
    ("primary", "build_session"), ("primary", "pbi"),
])
def test_the_server_refuses_functions(queue_stack, group, function):
    from bluesky_queueserver_api import BFunc

    api = queue_stack.api()
    api.user_group = group
    try:
        with pytest.raises(api.RequestFailedError, match="not allowed|permission|Function"):
            api.function_execute(BFunc(function), run_in_background=True)
        assert api.status()["manager_state"] == "idle"
    finally:
        api.close()


@pytest.mark.parametrize("plan, args", [
    ("measure_tray", [DETECTORS, "changer", [1], 0.1]),
    ("fly_slot", [DETECTORS, "changer", 1, 0.1]),
    ("count", [DETECTORS]),
])
def test_the_agent_queues_rescans_only(queue_stack, plan, args):
    api = queue_stack.api()
    api.user_group = "agent"
    try:
        assert set(api.plans_allowed()["plans_allowed"]) == {"rescan"}
        with pytest.raises(api.RequestFailedError, match=plan):
            api.item_add({"item_type": "plan", "name": plan, "args": args})
        assert api.queue_get()["items"] == []
    finally:
        api.close()


def test_people_flush_the_session(queue_stack):
    from bluesky_queueserver_api import BFunc

    api = queue_stack.api(timeout_s=30)
    try:
        response = api.function_execute(BFunc("flush_session", 20.0), run_in_background=False)
        assert response["success"], response
        api.wait_for_idle(timeout=30)
        result = api.task_result(response["task_uid"])
        assert result["result"]["success"], result
    finally:
        api.close()


def test_no_secret_on_the_stacks_command_lines_or_logs(queue_stack):
    """Redis, Tiled, the RE Manager and its worker: the Tiled key is on no command line
    (``/proc/PID/cmdline``) and in no log; the worker gets it through its environment."""
    from tests.infra.test_secrets import assert_nowhere

    key = queue_stack.tiled.api_key
    assert key not in queue_stack.config_path.read_text()
    for service in (queue_stack.redis, queue_stack.tiled, queue_stack.manager):
        assert_nowhere(key, service)


def test_the_queue_servers_redis_needs_its_password(queue_stack):
    """The queue server's Redis (queue, history, permissions, verdict feed) refuses a client
    without the password; the manager reached it with the password from its 0600 config
    file, which is on no command line and ``***`` in the manager's log (it prints its
    configuration, the address with the password, at start)."""
    import redis

    from tests.infra.test_secrets import assert_nowhere

    password = queue_stack.redis.password
    assert password
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(queue_stack.redis.url, socket_timeout=2).ping()
    assert queue_stack.redis.client(socket_timeout=2).ping()
    config = queue_stack.manager.qserver_config
    assert password in config.read_text() and config.stat().st_mode & 0o077 == 0
    for service in (queue_stack.redis, queue_stack.tiled, queue_stack.manager):
        assert_nowhere(password, service)
    log = queue_stack.manager.log_path.read_text(errors="replace")
    assert ":***@127.0.0.1:" in log  # the manager printed the address, redacted
    # the manager's queue lives in that Redis: it answered with it
    api = queue_stack.api()
    try:
        assert api.status()["items_in_queue"] >= 0
    finally:
        api.close()


def test_the_control_channel_is_encrypted(queue_stack, monkeypatch):
    """CurveZMQ: a client without the server's public key gets no answer; the private key
    is on no command line and in no log."""
    from pbi_bluesky.queue.api import PUBLIC_KEY_ENV, connect_api
    from tests.infra.test_secrets import assert_nowhere

    manager = queue_stack.manager
    assert manager.public_key and manager.secrets()
    assert_nowhere(manager.secrets()[0], manager)
    monkeypatch.delenv(PUBLIC_KEY_ENV, raising=False)
    api = connect_api(queue_stack.zmq_control_addr, timeout_s=1.0)
    try:
        with pytest.raises(Exception, match="[Tt]imeout|timed out|not respond"):
            api.status()
    finally:
        api.close()
    api = connect_api(queue_stack.zmq_control_addr, timeout_s=5.0,
                      public_key=manager.public_key)
    try:
        assert api.status()["worker_environment_exists"]
    finally:
        api.close()
