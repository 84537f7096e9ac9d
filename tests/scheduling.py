"""How ``pytest -n 2 --dist loadfile`` (the Makefile's) shares the test files between the two
xdist workers: like xdist's ``loadfile`` (a file's tests stay on one worker, so module
fixtures are built once), with two changes that shorten the suite's wall time.

- The files that use the queue server stack (``queue_stack``: Redis, Tiled, the RE Manager
  and its worker, 45 s to start) form ONE work unit, so that one worker starts the stack once
  instead of each worker starting its own (:data:`QUEUE_STACK_FILES`).
- Work units are handed out longest first (:data:`MEASURED_S`), so that no long file starts
  last on one worker while the other one has nothing left to do; xdist's own order (most
  tests first) put the slow one-test files at the end.

xdist's ``loadgroup`` with ``xdist_group`` marks would do the first; with pytest 9 it groups
nothing (pytest-xdist 3.8 renames ``item._nodeid``, which pytest 9 no longer reads).
"""

from __future__ import annotations

from typing import Any

QUEUE_STACK = "queue_stack"

QUEUE_STACK_FILES = frozenset({
    "tests/queue/test_permissions.py",
    "tests/queue/test_queue_server.py",
    "tests/agent/test_agent_queue.py",
    "tests/agent/test_agent_feed.py",
    "tests/agent/test_agent_policy_queue.py",
})
"""Every test file with a test using the ``queue_stack`` fixture (``tests/conftest.py``
warns about one missing here: it would still pass, on a second stack)."""

MEASURED_S = {
    QUEUE_STACK: 330, "tests/cli/test_cli.py": 160, "tests/live/test_beamline_e2e.py": 95,
    "tests/training/test_train_tiled.py": 80, "tests/bus/test_workers.py": 60,
    "tests/review/test_recalibrate_command.py": 57, "tests/review/test_review_browser.py": 50,
    "tests/test_rescore.py": 41, "tests/bus/test_worker_settings.py": 41,
    "tests/cli/test_ipython_profile.py": 38, "tests/bus/test_kill.py": 27,
    "tests/models/test_calibration.py": 25, "tests/models/test_distributed.py": 25,
    "tests/models/test_detector.py": 25, "tests/cli/test_newcomer.py": 20,
}
"""Rough seconds of the longest work units in a full run on 2 cores (``--durations``, a
unit's tests and fixture set-ups summed). Only the order matters: a unit missing here is
handed out after these, in xdist's order; nothing but the balance depends on the numbers."""


def work_unit(nodeid: str) -> str:
    """The work unit of a test: its file, or :data:`QUEUE_STACK` for the stack's users."""
    path = nodeid.split("::", 1)[0]
    return QUEUE_STACK if path in QUEUE_STACK_FILES else path


def make_scheduler(config: Any, log: Any) -> Any:
    """The ``loadfile`` scheduler with :func:`work_unit` scopes, longest units first."""
    from xdist.scheduler import LoadFileScheduling

    class Scheduler(LoadFileScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            if not self.ordered:  # the queue is complete before the first unit goes out
                self.ordered = True
                units = sorted(self.workqueue.items(),  # stable: xdist's order otherwise
                               key=lambda unit: -MEASURED_S.get(unit[0], 0))
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return Scheduler(config, log)
