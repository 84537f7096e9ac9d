"""The agent's side of the queue server: its rescan items, through bluesky-queueserver-api.

Every item the agent adds is a ``rescan`` plan whose item metadata (``meta``, merged by the
queue server into the start document of the run it makes) says what it is for::

    {"pbi_agent": {"request_uid": "...", "rescan_of": "<raw uid>", "round": 1,
                   "sample": "...", "slot": 3}}

so the queue (pending, running and history, kept in Redis by the queue server) tells a
restarted agent which rescans it already asked for. Requests are retried with stamina; a
queue server that is down or restarting only delays them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import stamina

__all__ = ["AgentItem", "QUEUE_ERRORS", "QueueRefused", "QueueUnavailable", "RescanQueue"]

logger = logging.getLogger(__name__)

META_KEY = "pbi_agent"


class QueueUnavailable(ConnectionError):
    """The queue server did not answer; the message says why."""


class QueueRefused(RuntimeError):
    """The queue server answered but refused the request (permissions, validation, lock)."""


def _queue_errors() -> tuple[type[BaseException], ...]:
    from bluesky_queueserver_api.comm_base import RequestFailedError, RequestTimeoutError

    return (RequestTimeoutError, RequestFailedError, QueueUnavailable, ConnectionError,
            TimeoutError, OSError)


QUEUE_ERRORS = _queue_errors()


@dataclass(frozen=True)
class AgentItem:
    """One of the agent's items in the queue server (pending, running or done)."""

    item_uid: str
    request_uid: str
    rescan_of: str
    round: int
    state: str  # "pending" | "running" | "done"
    exit_status: str | None = None  # for "done": completed, failed, stopped, aborted...
    run_uids: tuple[str, ...] = ()
    msg: str = ""
    sample: str | None = None
    slot: int | None = None
    time: float | None = None  # when a done item started (epoch s)

    @property
    def failed(self) -> bool:
        """Return whether the item finished without completing."""
        return self.state == "done" and self.exit_status != "completed"


def _agent_item(item: dict[str, Any], state: str) -> AgentItem | None:
    meta = (item.get("meta") or {}).get(META_KEY)
    if not isinstance(meta, dict) or not meta.get("rescan_of"):
        return None
    result = item.get("result") or {}
    return AgentItem(item_uid=item.get("item_uid", ""),
                     request_uid=str(meta.get("request_uid", "")),
                     rescan_of=str(meta["rescan_of"]), round=int(meta.get("round", 1)),
                     state=state, exit_status=result.get("exit_status"),
                     run_uids=tuple(result.get("run_uids") or ()),
                     msg=str(result.get("msg") or "")[:500], sample=meta.get("sample"),
                     slot=meta.get("slot"), time=result.get("time_start"))


class RescanQueue:
    """Adds rescan items and lists the agent's items.

    Parameters
    ----------
    zmq_control_addr
        The RE Manager's control address (``tcp://127.0.0.1:60615``); the 0MQ API needs no
        HTTP server.
    user, user_group
        Who the items are from (``user_group_permissions.yaml``'s ``agent`` group may only
        queue ``rescan``).
    timeout_s
        Per request.
    """

    def __init__(self, zmq_control_addr: str, *, user: str = "pbi agent",
                 user_group: str = "agent", timeout_s: float = 5.0) -> None:
        self.zmq_control_addr = zmq_control_addr
        self.user, self.user_group = user, user_group
        self.timeout_s = float(timeout_s)
        self._api: Any = None

    def _client(self) -> Any:
        if self._api is None:
            from bluesky_queueserver_api.zmq import REManagerAPI

            # an encrypted control channel: the server's public key from the environment
            # (QSERVER_ZMQ_PUBLIC_KEY, as qserver reads it)
            self._api = REManagerAPI(zmq_control_addr=self.zmq_control_addr,
                                     timeout_recv=self.timeout_s, timeout_send=self.timeout_s,
                                     zmq_public_key=os.environ.get("QSERVER_ZMQ_PUBLIC_KEY")
                                     or None)
            self._api.user, self._api.user_group = self.user, self.user_group
        return self._api

    def _reset(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            try:
                api.close()
            except Exception:  # noqa: BLE001 - a broken socket
                pass

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._client(), name)(*args, **kwargs)
        except QUEUE_ERRORS:
            self._reset()
            raise

    @stamina.retry(on=QUEUE_ERRORS, attempts=3, timeout=10.0, wait_initial=0.2, wait_max=2.0)
    def items(self, since: float | None = None) -> list[AgentItem]:
        """Return the agent's items: pending, running and in the history.

        Those that started before ``since``, epoch s, left out).
        """
        queue = self._call("queue_get")
        history = self._call("history_get")
        out: list[AgentItem] = []
        for item in queue.get("items") or []:
            found = _agent_item(item, "pending")
            if found:
                out.append(found)
        running = queue.get("running_item") or {}
        if running:
            found = _agent_item(running, "running")
            if found:
                out.append(found)
        for item in history.get("items") or []:
            found = _agent_item(item, "done")
            if found and (since is None or found.time is None or found.time >= since):
                out.append(found)
        return out

    @stamina.retry(on=QUEUE_ERRORS, attempts=3, timeout=10.0, wait_initial=0.2, wait_max=2.0)
    def status(self) -> dict[str, Any]:
        """Return the manager's status (``manager_state``, ``items_in_queue``, ...)."""
        return self._call("status")

    def add_rescan(self, *, detectors: list[str], changer: str, slot: Any, exposure: float,
                   rescan_of: str, round: int, request_uid: str, position: str,
                   md: dict[str, Any]) -> str:
        """Queue one ``rescan`` item (front: runs next; back: at the end).

        Returns its item uid. Raises :class:`QueueUnavailable` if the server refuses or cannot be
        reached (the caller checks :meth:`items` before trying again: a request that timed
        out may still have been added), :class:`QueueRefused` if it answers no.

        Parameters
        ----------
        detectors : list of str
            Detector names, as the queue server knows them.
        changer : str
            The sample changer's name.
        slot : Any
            The slot to measure again.
        exposure : float
            Exposure time (s).
        rescan_of : str
            Raw run uid of the measurement being checked.
        round : int
            Which rescan of that measurement (1, 2, ...).
        request_uid : str
            The agent's request uid, recorded in the item's metadata.
        position : str
            ``front`` (runs next) or ``back`` (at the end).
        md : dict
            Extra start-document metadata.
        """
        from bluesky_queueserver_api import BPlan
        from bluesky_queueserver_api.comm_base import RequestFailedError

        item = BPlan("rescan", list(detectors), changer, slot, float(exposure),
                     rescan_of=rescan_of, rescan_round=int(round), md=md)
        where = slot if isinstance(slot, dict) else {"slot": slot}
        item.meta = {META_KEY: {"request_uid": request_uid, "rescan_of": rescan_of,
                                "round": int(round), "sample": where.get("sample"),
                                "slot": where.get("slot")}}
        try:
            response = self._call("item_add", item, pos=position)
        except RequestFailedError as exc:
            raise QueueRefused(f"the queue server refused the rescan: {exc}") from exc
        except QUEUE_ERRORS as exc:
            raise QueueUnavailable(f"item_add failed: {type(exc).__name__}: {exc}") from exc
        if not response.get("success", False):
            raise QueueRefused(f"the queue server refused the rescan: {response.get('msg')}")
        return response["item"]["item_uid"]

    def close(self) -> None:
        """Close the connection to the queue server."""
        self._reset()
