"""The agent's loop steps faster while a flagged run waits for its raw run in Tiled."""

from __future__ import annotations

import threading
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


class _RecordingStop(threading.Event):
    """The loop's stop event: records every wait it is asked for and returns at once (no
    wall clock enters the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout if timeout is not None else -1.0))
        return self.is_set()


def _run(agent, **kwargs) -> list[float]:
    """Run the loop on a thread (no signal handlers touched); return the waits it asked."""
    stop = _RecordingStop()
    thread = threading.Thread(target=run_agent, args=(agent,), kwargs={**kwargs, "stop": stop})
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    return stop.waits


def test_steps_come_every_raw_recheck_while_a_raw_run_is_awaited():
    agent = _Stepper(waits=5)
    waits = _run(agent, poll_s=3.0, max_steps=5)  # a raw run awaited through all 5 steps
    assert agent.stats.steps == 5
    # 4 short waits (at most RAW_RECHECK_S each), no full poll_s wait before the 5th step
    assert len(waits) == 4 and max(waits) <= RAW_RECHECK_S, waits
    agent = _Stepper(waits=0)
    waits = _run(agent, poll_s=0.5, max_steps=3)  # otherwise every poll_s
    assert len(waits) == 2 and min(waits) > RAW_RECHECK_S, waits
