"""What the agent writes to Tiled: its rescan requests and its decisions, as small runs.

Both are detector-less runs (a start and a stop document, ``event_model.compose_run``)
in the same ``runs`` container as the measurements, so the ordinary searches find them:

* ``purpose == "pbi_agent_request"``: a rescan the agent queued (``rescan_of``, ``round``,
  ``request_uid``, the queue ``item_uid``, the policy). With the queue items' metadata it is
  the agent's memory: a restarted agent never queues a second rescan for the same round.
* ``purpose == "pbi_decision"`` (as written by the in-plan ``survey_and_rescan``):
  ``classification`` (``confirmed``, ``transient``, ``no verdict`` or ``skipped``) of the
  flagged raw run ``raw_uid``, linked to every raw run (``raw_uids``: the flagged one and its
  rescans) and every analysis run (``analysis_uids``) it rests on, with the evidence
  (scores, p-values) and the policy. ``pbi flagged --decision confirmed`` reads them.
"""

from __future__ import annotations

import logging
from typing import Any

import stamina
from event_model import compose_run

from pbi_bluesky.agent.source import TILED_ERRORS
from pbi_bluesky.store import Catalog

__all__ = ["DECISION", "REQUEST", "RecordWriter"]

logger = logging.getLogger(__name__)

DECISION = "pbi_decision"
REQUEST = "pbi_agent_request"


class RecordWriter:
    """Writes the agent's records through ``bluesky_tiled_plugins.TiledWriter``.

    Parameters
    ----------
    catalog
        The catalog the measurements are in.
    agent_info
        Recorded in every record (agent version, host, policy file...).
    """

    def __init__(self, catalog: Catalog, agent_info: dict[str, Any] | None = None) -> None:
        self.catalog = catalog
        self.agent_info = dict(agent_info or {})

    def _write(self, metadata: dict[str, Any]) -> str:
        # composed once: a retry writes the same record (same uid), never a second one
        bundle = compose_run(metadata={k: v for k, v in metadata.items() if v is not None})
        start, stop = bundle.start_doc, bundle.compose_stop(exit_status="success")
        self._send(dict(start), dict(stop))
        return start["uid"]

    @stamina.retry(on=TILED_ERRORS, attempts=3, timeout=15.0, wait_initial=0.2, wait_max=2.0)
    def _send(self, start: dict[str, Any], stop: dict[str, Any]) -> None:
        try:
            runs = self.catalog.runs
            if start["uid"] in runs:  # an earlier attempt wrote the start: finish it
                node = runs[start["uid"]]
                if not node.metadata.get("stop"):
                    node.update_metadata(metadata={"stop": stop}, drop_revision=True)
                return
            writer = self.catalog.writer()
            writer("start", dict(start))
            writer("stop", dict(stop))
        except Exception:
            self.catalog.reset()
            raise

    def request(self, *, rescan_of: str, round: int, request_uid: str, item_uid: str | None,
                slot: Any, sample: Any, policy: dict[str, Any], position: str,
                timing: dict[str, float] | None = None) -> str:
        """Record a rescan the agent queued; return the record's uid.

        Parameters
        ----------
        rescan_of : str
            Raw run uid of the measurement being checked.
        round : int
            Which rescan of that measurement (1, 2, ...).
        request_uid : str
            The request's own uid.
        item_uid : str or None
            The queue item's uid, when the queue server accepted it.
        slot, sample : Any
            Where and what is measured again.
        policy : dict
            The policy the agent acted under (plain data).
        position : str
            Where in the queue: ``front`` or ``back``.
        timing : dict, optional
            Epoch times of the request's stages: ``heard`` (the agent had the verdict),
            ``raw_found`` (the flagged raw run was in Tiled), ``item_added`` (the queue
            server took the item). The record itself is written after them.
        """
        return self._write({
            "purpose": REQUEST, "pbi_agent": True, "plan_name": "pbi agent",
            "rescan_of": rescan_of, "round": int(round), "request_uid": request_uid,
            "item_uid": item_uid, "slot": slot, "sample": sample, "position": position,
            "policy": policy, "agent": self.agent_info, "timing": timing,
        })

    def decision(self, *, raw_uid: str, classification: str, reason: str, slot: Any,
                 sample: Any, composition: Any, raw_uids: list[str],
                 analysis_uids: list[str], request_uids: list[str], item_uids: list[str],
                 evidence: dict[str, Any], policy: dict[str, Any]) -> str:
        """Record a decision about a flagged raw run; return the record's uid.

        Parameters
        ----------
        raw_uid : str
            The flagged raw run.
        classification : str
            The decision (confirmed, transient, no verdict, skipped).
        reason : str
            Why, in words.
        slot, sample, composition : Any
            Where, what and which recipe was measured.
        raw_uids, analysis_uids : list of str
            The measurements and their analyses the decision rests on.
        request_uids, item_uids : list of str
            The agent's rescan requests and their queue items.
        evidence : dict
            The verdicts weighed (plain data).
        policy : dict
            The policy the agent acted under (plain data).
        """
        uid = self._write({
            "purpose": DECISION, "pbi_agent": True, "plan_name": "pbi agent",
            "decision_by": "pbi agent", "raw_uid": raw_uid, "classification": classification,
            "reason": reason, "slot": slot, "sample": sample, "composition": composition,
            "raw_uids": raw_uids, "analysis_uids": analysis_uids,
            "rescan_uids": [u for u in raw_uids if u != raw_uid],
            "request_uids": request_uids, "item_uids": item_uids, "evidence": evidence,
            "policy": policy, "agent": self.agent_info,
        })
        logger.info("decision for raw run %s (slot %s, %s): %s (%s)", raw_uid[:8], slot,
                    sample, classification, reason)
        return uid
