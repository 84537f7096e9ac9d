"""The agent's loop steps faster while a flagged run waits for its raw run in Tiled."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from pbi_bluesky.agent.core import RAW_RECHECK_S, AgentStats
from pbi_bluesky.agent.runner import run_agent


class _Stepper:
    """The loop's view of an agent: steps counted, a raw run awaited for ``waits`` steps."""

    def __init__(self, waits: int) -> None:
        self.waits = waits
        self.stats = AgentStats()
        self.policy = SimpleNamespace(as_dict=lambda: {})
        self.queue = SimpleNamespace(close=lambda: None)
        self.follower = SimpleNamespace()

    @property
    def waiting_for_raw(self) -> bool:
        return self.stats.steps < self.waits

    def step(self) -> None:
        self.stats.steps += 1


def _run(agent, **kwargs) -> float:
    """Run the loop on a thread (no signal handlers touched); return the seconds it took."""
    t0 = time.monotonic()
    thread = threading.Thread(target=run_agent, args=(agent,), kwargs=kwargs)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    return time.monotonic() - t0


def test_steps_come_every_raw_recheck_while_a_raw_run_is_awaited():
    agent = _Stepper(waits=5)
    took = _run(agent, poll_s=3.0, max_steps=5)  # a raw run awaited through all 5 steps
    assert agent.stats.steps == 5
    # 4 short waits (RAW_RECHECK_S) and no full poll_s wait before the 5th step
    assert took < 4 * RAW_RECHECK_S + 1.5, took
    agent = _Stepper(waits=0)
    assert _run(agent, poll_s=0.5, max_steps=3) >= 2 * 0.5 - 0.05  # otherwise every poll_s
