"""The agent's decisions: follow analyses, queue rescans by policy, classify, record.

One :meth:`Agent.step` (the loop calls it every ``poll_s``):

1. new finished analysis runs from the verdict feed and Tiled
   (:class:`~pbi_bluesky.agent.source.FeedFollower`) or from Tiled alone
   (:class:`~pbi_bluesky.agent.source.TiledFollower`); the first step also reads the agent's
   records (requests, decisions) back from Tiled;
2. the agent's items in the queue server (pending, running, history), which are merged with
   the requests: an item nobody recorded (the agent died right after adding it) is adopted;
3. for every flagged measurement (an analysis with flagged frames that is not itself a
   rescan) without a decision: a reference is ``skipped``; a flagged rescan makes it
   ``confirmed``; while a requested rescan has no verdict it waits; a flagged run whose raw
   run is not in Tiled yet (its verdict came first, by the feed) is waited for up to
   ``raw_wait_s`` (stepping every ``RAW_RECHECK_S`` meanwhile), then ``skipped`` with that
   reason; if the policy allows
   another rescan of the sample it queues one (after the cool-down); otherwise clean
   rescans make it ``transient``, rescans that said nothing ``no verdict``.

Requests are keyed by (flagged raw run, round): before adding an item the agent has listed
the queue in the same step, and after a request that may or may not have reached the queue
(a timeout) it waits ``uncertain_hold_s`` and lists again, so a restart or an outage never
makes a second item for one round. With a ``may_queue`` guard (the standby lease,
:mod:`pbi_bluesky.agent.lease`) the agent asks it right before every ``item_add``, and
queues nothing unless it still holds the lease. A failing step is logged and the next one
starts from the catalog and the queue again; nothing the agent does can stop the queue.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pbi_bluesky.agent.policy import AgentPolicy
from pbi_bluesky.agent.records import DECISION, REQUEST, RecordWriter
from pbi_bluesky.agent.rescans import (
    QUEUE_ERRORS,
    AgentItem,
    QueueRefused,
    QueueUnavailable,
    RescanQueue,
)
from pbi_bluesky.agent.source import AnalysisResult, FeedFollower, TiledFollower

__all__ = ["Agent", "Request"]

logger = logging.getLogger(__name__)

SLOT_FIELDS = ("sample", "composition", "thickness_cm", "sample_type")
MISSING_GRACE_S = 30.0
"""A requested item that is in neither the queue nor its history for this long was removed."""
FAILED_GRACE_S = 5.0
"""After its item failed, a rescan's analysis (if it took a frame) may still arrive."""
MAX_REFUSALS = 3
RAW_RECHECK_S = 0.2
"""While a flagged run waits for its raw run in Tiled, steps come this often (not every
``poll_s``): the raw run is usually there a fraction of a second after the verdict."""


@dataclass
class Request:
    """One rescan the agent asked for."""

    origin: str
    round: int
    request_uid: str
    item_uid: str | None
    time: float
    sample_key: str
    recorded: bool = False
    item: AgentItem | None = None
    missing_since: float | None = None
    done_since: float | None = None
    timing: dict[str, float] = field(default_factory=dict)
    """Epoch times of the request's stages (``heard``, ``raw_found``, ``item_added``)."""

    def given_up(self, now: float, verdict_timeout_s: float) -> str | None:
        """Why this request will never bring a verdict (``None``: it still may)."""
        if self.item is None:
            if self.missing_since is not None and now - self.missing_since > MISSING_GRACE_S:
                return "its queue item was removed"
            return None
        if self.item.state != "done":
            return None
        if self.done_since is None:
            self.done_since = now
        if self.item.failed and now - self.done_since > FAILED_GRACE_S:
            return f"its queue item ended {self.item.exit_status}: {self.item.msg[:200]}"
        if now - self.done_since > verdict_timeout_s:
            return f"no analysis within {verdict_timeout_s:g} s of the rescan"
        return None


@dataclass
class _Case:
    origin: AnalysisResult
    refusals: int = 0
    not_before: float = 0.0
    last_refusal: str = ""
    raw_missing_since: float | None = None
    heard: float = field(default_factory=time.time)
    """When the agent had the verdict (epoch s)."""
    raw_found: float | None = None
    """When the agent first found the raw run in Tiled (epoch s)."""


@dataclass
class AgentStats:
    started: float = field(default_factory=time.time)
    steps: int = 0
    failed_steps: int = 0
    last_error: str = ""
    last_step: float = 0.0
    queue_reachable: bool = False
    feed: bool | None = None
    rescans_queued: int = 0
    fenced: int = 0
    decisions: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["decisions"] = dict(self.decisions)
        return out


def _sample_key(sample: Any, slot: Any) -> str:
    """Rescans are counted per sample: its name, else its slot."""
    return str(sample) if sample else f"slot {slot}"


class Agent:
    """Decides rescans of flagged samples (see the module docstring).

    Parameters
    ----------
    follower
        Where analyses and the agent's records are read.
    queue
        Where rescans are queued.
    writer
        Where requests and decisions are written.
    policy
        What the agent may do.
    uncertain_hold_s
        After an ``item_add`` whose outcome is unknown, wait this long before listing the
        queue and trying again.
    verdict_timeout_s
        A rescan whose item completed but whose analysis has not arrived after this long
        counts as a rescan without a verdict.
    raw_wait_s
        A flagged run whose raw run is not in Tiled after this long (from the first step
        that tried) is ``skipped`` with that reason.
    may_queue
        Asked right before every ``item_add``; ``False`` (the lease is lost) queues nothing.
    """

    def __init__(self, follower: TiledFollower | FeedFollower, queue: RescanQueue,
                 writer: RecordWriter, policy: AgentPolicy, *, uncertain_hold_s: float = 10.0,
                 verdict_timeout_s: float = 120.0, raw_wait_s: float = 120.0,
                 may_queue: Callable[[], bool] | None = None) -> None:
        self.follower, self.queue, self.writer, self.policy = follower, queue, writer, policy
        self.uncertain_hold_s = float(uncertain_hold_s)
        self.verdict_timeout_s = float(verdict_timeout_s)
        self.raw_wait_s = float(raw_wait_s)
        self.may_queue = may_queue
        self.stats = AgentStats()
        self._loaded = False
        self._warm = False
        self._cases: dict[str, _Case] = {}
        self._decided: dict[str, str] = {}
        self._requests: dict[str, dict[int, Request]] = defaultdict(dict)
        self._rescans: dict[str, list[AnalysisResult]] = defaultdict(list)
        self._rescan_request: dict[str, str | None] = {}  # rescan analysis uid -> request uid
        self._inbox: list[AnalysisResult] = []  # polled, not yet ingested

    # -- state ------------------------------------------------------------------------
    def _load(self) -> None:
        """Load the agent's memory from Tiled: decisions and requests already made."""
        for start in self.follower.records(DECISION):
            if start.get("raw_uid") and start.get("classification"):
                self._decided[start["raw_uid"]] = start["classification"]
        for start in self.follower.records(REQUEST):
            origin, rnd = start.get("rescan_of"), start.get("round")
            if origin and isinstance(rnd, int) and rnd not in self._requests[origin]:
                self._requests[origin][rnd] = Request(
                    origin, rnd, str(start.get("request_uid")), start.get("item_uid"),
                    float(start.get("time") or 0.0),
                    _sample_key(start.get("sample"), start.get("slot")), recorded=True)
        logger.info("pbi agent: %d decision(s) and %d rescan request(s) already in the "
                    "catalog", len(self._decided),
                    sum(len(v) for v in self._requests.values()))
        self._loaded = True

    def _ingest(self, result: AnalysisResult) -> None:
        if result.rescan_of:
            meta = result.start.get("pbi_agent")  # carried by the analysis run itself
            if not isinstance(meta, dict):  # analyses made before it was
                meta = (self.follower.raw_start(result.raw_uid) or {}).get("pbi_agent") or {}
            self._rescans[result.rescan_of].append(result)
            self._rescan_request[result.analysis_uid] = meta.get("request_uid")
            rnd = meta.get("round")
            if isinstance(rnd, int) and rnd not in self._requests[result.rescan_of]:
                # an agent's rescan neither the records nor the queue remember (its history
                # was cleared): it still counts
                self._requests[result.rescan_of][rnd] = Request(
                    result.rescan_of, rnd, str(meta.get("request_uid")), None, result.time,
                    _sample_key(meta.get("sample"), meta.get("slot")), recorded=True)
        elif result.is_flagged and result.raw_uid not in self._decided:
            self._cases.setdefault(result.raw_uid, _Case(result))
            logger.info("pbi agent: slot %s (%s) flagged in run %s (max score %.3g)",
                        result.slot, result.sample, result.raw_uid[:8],
                        result.max_score if result.max_score is not None else float("nan"))

    def _merge(self, items: list[AgentItem], now: float) -> None:
        seen: set[str] = set()
        for item in items:
            seen.add(item.item_uid)
            rounds = self._requests[item.rescan_of]
            req = rounds.get(item.round)
            if req is None:  # added by an agent that died before recording it
                req = Request(item.rescan_of, item.round, item.request_uid, item.item_uid,
                              time.time(), _sample_key(item.sample, item.slot))
                rounds[item.round] = req
                logger.info("pbi agent: adopted queue item %s (rescan %d of %s)",
                            item.item_uid[:8], item.round, item.rescan_of[:8])
            elif req.item_uid and req.item_uid != item.item_uid:
                logger.error("pbi agent: two queue items for rescan %d of %s (%s, %s)",
                             item.round, item.rescan_of[:8], req.item_uid, item.item_uid)
                continue
            req.item_uid = item.item_uid
            req.item = item
            req.missing_since = None
        for rounds in self._requests.values():
            for req in rounds.values():
                if req.item_uid not in seen:
                    req.item = None
                    req.missing_since = req.missing_since or now

    def _record_requests(self) -> None:
        for rounds in self._requests.values():
            for req in rounds.values():
                if req.recorded or req.item_uid is None:
                    continue
                case = self._cases.get(req.origin)
                origin = case.origin if case else None
                item = req.item
                self.writer.request(
                    rescan_of=req.origin, round=req.round, request_uid=req.request_uid,
                    item_uid=req.item_uid,
                    slot=origin.slot if origin else (item.slot if item else None),
                    sample=origin.sample if origin else (item.sample if item else None),
                    policy=self.policy.as_dict(), position=self.policy.position,
                    timing=req.timing or None)
                req.recorded = True

    @property
    def waiting_for_raw(self) -> bool:
        """Return whether a flagged run waits for its raw run to reach Tiled.

        While one does, the loop steps every :data:`RAW_RECHECK_S`.
        """
        return any(c.raw_missing_since is not None for u, c in self._cases.items()
                   if u not in self._decided)

    # -- one step ---------------------------------------------------------------------
    def step(self) -> None:
        """Read, merge, decide, queue (see the module docstring).

        Raises if the catalog cannot be read; the queue being unreachable only postpones new
        rescans.
        """
        self._inbox.extend(self.follower.poll(RAW_RECHECK_S if self.waiting_for_raw
                                              else None))
        self.stats.feed = getattr(self.follower, "feed_ok", None)
        if not self._loaded:
            self._load()
        while self._inbox:  # a result leaves the inbox only once ingested
            self._ingest(self._inbox[0])
            self._inbox.pop(0)
        now = time.monotonic()
        try:
            items = self.queue.items(since=self.follower.since)
            self.stats.queue_reachable = True
        except QUEUE_ERRORS as exc:
            items = None
            if self.stats.queue_reachable or self.stats.steps == 0:
                logger.warning("pbi agent: queue server not reachable (%s); rescans wait",
                               exc)
            self.stats.queue_reachable = False
        if items is not None:
            self._merge(items, now)
        for raw_uid in list(self._cases):
            if raw_uid in self._decided:
                self._cases.pop(raw_uid)
                continue
            self._evaluate(self._cases[raw_uid], now, queue_ok=items is not None)
        self._record_requests()
        self.stats.steps += 1
        self.stats.last_step = time.time()

    def _rescans_of(self, raw_uid: str) -> list[AnalysisResult]:
        return sorted(self._rescans.get(raw_uid, []), key=lambda r: r.time)

    def _sample_requests(self, key: str) -> list[Request]:
        return [r for rounds in self._requests.values() for r in rounds.values()
                if r.sample_key == key]

    def _evaluate(self, case: _Case, now: float, queue_ok: bool) -> None:
        o, policy = case.origin, self.policy
        if policy.is_reference(o.slot, o.sample_type, o.purpose):
            self._decide(case, "skipped", "a reference (policy: never rescanned)")
            return
        if policy.min_max_score is not None and (o.max_score is None
                                                 or o.max_score < policy.min_max_score):
            self._decide(case, "skipped", f"max score below the policy's min_max_score "
                                          f"{policy.min_max_score:g}")
            return
        rescans = self._rescans_of(o.raw_uid)
        if any(r.is_flagged for r in rescans):
            self._decide(case, "confirmed", "a rescan was flagged too")
            return
        answered = {self._rescan_request.get(r.analysis_uid) for r in rescans}
        reasons = []
        for req in self._requests.get(o.raw_uid, {}).values():
            if req.request_uid in answered:
                continue
            why = req.given_up(now, self.verdict_timeout_s)
            if why is None:
                return  # a rescan is on its way
            reasons.append(f"rescan {req.round} {why}")
        used = len(self._sample_requests(_sample_key(o.sample, o.slot)))
        if used < policy.max_rescans and case.refusals < MAX_REFUSALS:
            if not self._raw_in_catalog(case, now):
                return
            if queue_ok and now >= case.not_before and self._cooled_down(o):
                self._submit(case, now)
            return
        clean = [r for r in rescans if r.has_verdict and not r.is_flagged]
        if clean:
            self._decide(case, "transient", f"{len(clean)} clean rescan(s)")
        elif case.refusals >= MAX_REFUSALS:
            self._decide(case, "no verdict", f"the queue refused the rescan: "
                                             f"{case.last_refusal[:300]}")
        elif rescans or reasons:
            self._decide(case, "no verdict", "; ".join(reasons) or "the rescans scored no "
                                                                  "frame")
        else:
            self._decide(case, "skipped", f"the sample's {policy.max_rescans} rescan(s) "
                                          "allowed by the policy are used")

    def _raw_in_catalog(self, case: _Case, now: float) -> bool:
        """Return whether the flagged raw run is in Tiled (a rescan repeats what it holds).

        While it is not, wait up to ``raw_wait_s``, then decide ``skipped``.
        """
        if self.follower.raw_start(case.origin.raw_uid) is not None:
            case.raw_missing_since = None
            case.raw_found = case.raw_found or time.time()
            return True
        if case.raw_missing_since is None:
            case.raw_missing_since = now
            logger.info("pbi agent: run %s flagged, its raw run is not in Tiled yet; waiting "
                        "up to %g s", case.origin.raw_uid[:8], self.raw_wait_s)
        elif now - case.raw_missing_since > self.raw_wait_s:
            self._decide(case, "skipped", f"its raw run {case.origin.raw_uid} was not in the "
                                          f"catalog {self.raw_wait_s:g} s after its verdict")
        return False

    def _cooled_down(self, origin: AnalysisResult) -> bool:
        if self.policy.cooldown_s <= 0:
            return True
        key = _sample_key(origin.sample, origin.slot)
        times = [r.time for r in self._sample_requests(key)]
        return not times or time.time() - max(times) >= self.policy.cooldown_s

    def _submit(self, case: _Case, now: float) -> None:
        o = case.origin
        raw = self.follower.raw_start(o.raw_uid)
        if raw is None:
            return  # the raw run is not in the catalog yet
        rounds = self._requests[o.raw_uid]
        rnd = max(rounds, default=0) + 1
        slot = {"slot": raw.get("slot", o.slot),
                **{k: raw[k] for k in SLOT_FIELDS if raw.get(k) is not None}}
        exposure = float(raw.get("exposure_s") or 1.0) * self.policy.exposure_factor
        if self.may_queue is not None and not self.may_queue():
            self.stats.fenced += 1
            logger.warning("pbi agent: lease lost; not queueing the rescan of slot %s",
                           o.slot)
            return
        request_uid = str(uuid.uuid4())
        md = {"requested_by": "pbi agent",
              "first_verdict": {"analysis_uid": o.analysis_uid, "flagged": o.flagged,
                                "max_score": o.max_score}}
        try:
            item_uid = self.queue.add_rescan(
                detectors=list(raw.get("detectors") or []),
                changer=(raw.get("motors") or ["changer"])[0], slot=slot, exposure=exposure,
                rescan_of=o.raw_uid, round=rnd, request_uid=request_uid,
                position=self.policy.position, md=md)
        except QueueRefused as exc:
            case.refusals += 1
            case.last_refusal = str(exc)
            case.not_before = now + 5.0 * case.refusals
            logger.error("pbi agent: rescan of slot %s refused (%d/%d): %s", o.slot,
                         case.refusals, MAX_REFUSALS, exc)
            return
        except QueueUnavailable as exc:
            case.not_before = now + self.uncertain_hold_s
            logger.warning("pbi agent: rescan of slot %s not confirmed by the queue server "
                           "(%s); listing the queue again in %g s", o.slot, exc,
                           self.uncertain_hold_s)
            return
        added = time.time()
        rounds[rnd] = Request(o.raw_uid, rnd, request_uid, item_uid, added,
                              _sample_key(o.sample, o.slot),
                              timing={"heard": case.heard,
                                      "raw_found": case.raw_found or added,
                                      "item_added": added})
        self.stats.rescans_queued += 1
        logger.info("pbi agent: queued rescan %d of slot %s (%s) at the %s of the queue, "
                    "%g s (item %s)", rnd, o.slot, o.sample, self.policy.position, exposure,
                    item_uid[:8])

    def _decide(self, case: _Case, classification: str, reason: str) -> None:
        o = case.origin
        rescans = self._rescans_of(o.raw_uid)
        requests = sorted(self._requests.get(o.raw_uid, {}).values(), key=lambda r: r.round)
        evidence = {
            "first": {"analysis_uid": o.analysis_uid, "flagged": o.flagged,
                      "frames": o.frames, "max_score": o.max_score, "verdict": o.verdict},
            "rescans": [{"raw_uid": r.raw_uid, "analysis_uid": r.analysis_uid,
                         "flagged": r.flagged, "scored": r.scored, "max_score": r.max_score,
                         "verdict": r.verdict,
                         "request_uid": self._rescan_request.get(r.analysis_uid)}
                        for r in rescans],
        }
        self.writer.decision(
            raw_uid=o.raw_uid, classification=classification, reason=reason, slot=o.slot,
            sample=o.sample, composition=o.composition,
            raw_uids=[o.raw_uid, *[r.raw_uid for r in rescans]],
            analysis_uids=[o.analysis_uid, *[r.analysis_uid for r in rescans]],
            request_uids=[r.request_uid for r in requests],
            item_uids=[r.item_uid for r in requests if r.item_uid],
            evidence=evidence, policy=self.policy.as_dict())
        self._decided[o.raw_uid] = classification
        self.stats.decisions[classification] += 1

    def warm_up(self) -> None:
        """Connect to the catalog now.

        A standby does, so that taking over costs no connection set-up; raises what connecting
        raises. Once connected, does nothing.
        """
        if not self._warm:
            _ = self.follower.catalog.runs
            self._warm = True

    def forget(self) -> None:
        """Drop everything in memory.

        A standby that held the lease before takes it again: another agent acted meanwhile; the
        next step reads the catalog and the queue again,
        as a restarted agent does.
        """
        self._loaded = False
        for table in (self._cases, self._decided, self._requests, self._rescans,
                      self._rescan_request):
            table.clear()
        self._inbox.clear()
        self.follower.forget()

    # -- views ------------------------------------------------------------------------
    @property
    def decisions(self) -> dict[str, str]:
        """Raw run uid -> classification (this agent's and those read back)."""
        return dict(self._decided)

    def requests(self) -> list[Request]:
        """Every rescan request known (recorded or adopted)."""
        return [r for rounds in self._requests.values() for r in rounds.values()]
