"""A real queue server for tests: Redis + Tiled + ``start-re-manager`` running the profile's
startup file against the session's sim IOC (one stack per test session, shared by every
module importing :func:`queue_stack`), and helpers to queue items and wait.

``tests/conftest.py`` registers this module with ``pytest_plugins``: a test names
``queue_stack`` as an argument and imports only the helpers below.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.beamline_fixtures import EPICS_ENV
from tests.conftest import SIM_EXPOSURE_S

_SHARED: dict[str, Any] = {"stack": None, "users": 0}

DETECTORS = ["saxs", "i0", "transmission"]
"""The test beamline's detector and monitors by name (as queued items name them)."""


@pytest.fixture(scope="session")
def queue_stack(sim_config, model_300k, instrument_300k, tmp_path_factory) -> Iterator[Any]:
    """A running :class:`pbi_bluesky.testing.qserver.QueueStack` whose worker environment is
    open: the session's IOC, the ``model_300k`` bundle, an empty model registry
    (``config.scorer.registry``; a test that promotes rolls back), the expected dark of the
    test exposure; always stopped at the end of the session."""
    if _SHARED["stack"] is None:
        from pbi_bluesky.demos.queue import write_dark
        from pbi_bluesky.models import save_bundle
        from pbi_bluesky.testing.qserver import QueueStack

        root = tmp_path_factory.mktemp("queue_stack")
        save_bundle(model_300k, root / "model")
        dark = write_dark(instrument_300k, SIM_EXPOSURE_S, root / "dark.edf")
        # a model registry with nothing promoted: the worker scores with scorer.model
        cfg = sim_config.with_overrides(scorer={"model": str(root / "model"),
                                                "registry": str(root / "registry")},
                                        geometry={"dark": str(dark)})
        env = dict(EPICS_ENV)
        if os.environ.get("OPHYD_CONTROL_LAYER"):
            env["OPHYD_CONTROL_LAYER"] = os.environ["OPHYD_CONTROL_LAYER"]
        stack = QueueStack(cfg, root / "stack", env=env)
        stack.start()
        _SHARED["stack"] = stack
    _SHARED["users"] += 1
    stack = _SHARED["stack"]
    try:
        yield stack
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            _SHARED["stack"] = None
            stack.stop()


def measure_items(stack: Any, slots: list[int], md: dict[str, Any] | None = None,
                  exposure: float = SIM_EXPOSURE_S) -> list[Any]:
    """One ``measure_tray`` item per slot (slot 0 as a reference), as people queue them."""
    from bluesky_queueserver_api import BPlan

    items = []
    for slot in slots:
        purpose = "reference" if slot == 0 else "survey"
        items.append(BPlan("measure_tray", DETECTORS, "changer", [slot], exposure,
                           md={"purpose": purpose, **(md or {})}))
    return items


def queue(stack: Any, items: list[Any], *, autostart: bool = True) -> list[str]:
    """Add items at the back of the queue (autostart on); returns their item uids."""
    api = stack.api()
    try:
        response = api.item_add_batch(items)
        assert response["success"], response
        if autostart:
            assert api.queue_autostart(True)["success"]
        return [item["item_uid"] for item in response["items"]]
    finally:
        api.close()


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             on_timeout: Callable[[], str] = lambda: "") -> Any:
    """Poll ``condition`` until it returns something true; fails the test after
    ``timeout`` s saying what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{on_timeout()}")


def history(stack: Any) -> list[dict[str, Any]]:
    api = stack.api()
    try:
        return api.history_get()["items"]
    finally:
        api.close()


def idle(stack: Any) -> bool:
    api = stack.api()
    try:
        status = api.status()
    finally:
        api.close()
    return status["manager_state"] == "idle" and status["items_in_queue"] == 0
