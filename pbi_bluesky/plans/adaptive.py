"""Adaptive rescans: tell a material defect from a transient glitch.

``survey_and_rescan`` measures a tray with :func:`~pbi_bluesky.plans.measure_tray`, reads
the live scorer's verdicts through a thread-safe :class:`~pbi_bluesky.live.VerdictChannel`,
and rescans every flagged sample (longer exposure, bounded rounds, rescans never trigger
rescans of their own). A flag that persists is ``confirmed`` (the material is off); one
that vanishes is ``transient`` (beam or detector glitch). Waiting for a verdict has a
deadline: a missing verdict is reported as ``no verdict``, never a hang. Each decision
is written as a small ``pbi_decision`` run with its evidence, and the rescan runs carry
``rescan_of`` and the first verdict in their start documents.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

from pbi_bluesky.live.channel import VerdictChannel
from pbi_bluesky.plans.tray import measure_tray, rescan, resolve_slots
from pbi_bluesky.scoring.result import FrameResult

__all__ = ["SampleOutcome", "survey_and_rescan", "wait_for_verdict"]

logger = logging.getLogger(__name__)


@dataclass
class SampleOutcome:
    """What the survey concluded about one slot."""

    slot: int
    sample: str | None
    composition: str | None
    raw_uid: str | None
    flagged: bool | None
    score: float | None
    p_value: float | None
    top_attribution: str = ""
    predicted_composition: str = ""
    classification: str = "normal"  # normal | confirmed | transient | no verdict | failed
    rescans: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the outcome as a plain dict."""
        return asdict(self)


def wait_for_verdict(
    channel: VerdictChannel, raw_uid: str, timeout: float, poll: float = 0.05
) -> MsgGenerator[list[FrameResult] | None]:
    """Wait (yielding to the RunEngine) until the run's frames are all scored.

    Parameters
    ----------
    channel
        The live scorer's verdict channel.
    raw_uid
        Uid of the raw run whose verdicts are awaited.
    timeout
        Seconds to wait before giving up (logged as a warning).
    poll
        Seconds between looks at the channel (a ``bps.sleep``, so the RunEngine stays
        responsive).

    Returns
    -------
    list of FrameResult or None
        Every frame's result once the run is finished, ``None`` after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        results = channel.wait_for_run(raw_uid, 0)
        if results is not None:
            return results
        if time.monotonic() > deadline:
            logger.warning("no verdict for run %s within %.1f s", raw_uid[:8], timeout)
            return None
        yield from bps.sleep(poll)


def _flag(results: list[FrameResult] | None) -> tuple[bool | None, FrameResult | None]:
    if not results:
        return None, None
    scored = [r for r in results if r.status == "scored"]
    if not scored:
        return None, results[0]
    worst = max(scored, key=lambda r: r.score)
    return any(r.is_anomaly for r in scored), worst


def survey_and_rescan(
    detector: Any,
    changer: Any,
    slots: Iterable[int | Mapping[str, Any]],
    exposure: float,
    *,
    channel: VerdictChannel,
    rounds: int = 1,
    rescan_exposure_factor: float = 2.0,
    verdict_timeout: float = 30.0,
    md: Mapping[str, Any] | None = None,
    reference_slots: Iterable[int | Mapping[str, Any]] = (),
) -> MsgGenerator[list[SampleOutcome]]:
    """Survey a tray, then rescan what was flagged until it is confirmed or cleared.

    Parameters
    ----------
    detector, changer
        As for :func:`~pbi_bluesky.plans.measure_tray` (``detector`` may be a list: the
        detector and its monitors).
    slots
        The samples to survey.
    exposure
        Survey exposure (s); rescans use ``exposure * rescan_exposure_factor``.
    channel
        The live scorer's verdict channel (``LiveScorer(...).channel``).
    rounds
        Maximum rescans per flagged sample (>= 1). A sample is ``confirmed`` as soon as a
        rescan is flagged too, ``transient`` when all its rescans are clean.
    verdict_timeout
        Deadline (s) for each verdict.
    md
        Extra start-document metadata for every run.
    reference_slots
        Measured first and not judged (e.g. the empty cell, with
        ``{"slot": 0, "sample_type": "empty_cell"}``).

    Returns
    -------
    list of SampleOutcome
        One per surveyed slot, in order.
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    user_md = dict(md or {})
    refs = list(reference_slots)
    if refs:
        ref_uids = yield from measure_tray(detector, changer, refs, exposure,
                                           md={**user_md, "purpose": "reference"})
        for uid in ref_uids:
            if uid:
                yield from wait_for_verdict(channel, uid, verdict_timeout)
    entries = list(slots)
    uids = yield from measure_tray(detector, changer, entries, exposure,
                                   md={**user_md, "purpose": "survey"})
    outcomes: list[SampleOutcome] = []
    for (slot, _known), uid in zip(resolve_slots(entries), uids, strict=True):
        results = (yield from wait_for_verdict(channel, uid, verdict_timeout)) if uid else None
        flagged, worst = _flag(results)
        meta = (worst.metadata if worst else {}) or {}
        outcome = SampleOutcome(
            slot=slot, sample=meta.get("sample"),
            composition=worst.expected_composition if worst else None, raw_uid=uid,
            flagged=flagged, score=worst.score if worst else None,
            p_value=worst.p_value if worst else None,
            top_attribution=worst.top_attribution if worst else "",
            predicted_composition=worst.predicted_composition if worst else "",
            classification=("no verdict" if results is None else
                            "failed" if flagged is None else
                            "flagged" if flagged else "normal"),
        )
        outcomes.append(outcome)
    for outcome in outcomes:
        if outcome.classification != "flagged":
            continue
        entry = next(e for e in entries
                     if resolve_slots([e])[0][0] == outcome.slot)
        evidence = {"first_score": outcome.score, "first_p_value": outcome.p_value,
                    "first_top_attribution": outcome.top_attribution}
        decision = "transient"
        for n in range(1, rounds + 1):
            rescan_uid = yield from rescan(
                detector, changer, entry, exposure * rescan_exposure_factor,
                rescan_of=outcome.raw_uid, rescan_round=n,
                md={**user_md, "first_verdict": evidence})
            results = (yield from wait_for_verdict(channel, rescan_uid, verdict_timeout)
                       if rescan_uid else None)
            flagged, worst = _flag(results)
            outcome.rescans.append({
                "raw_uid": rescan_uid, "round": n, "flagged": flagged,
                "score": worst.score if worst else None,
                "p_value": worst.p_value if worst else None,
                "exposure_s": exposure * rescan_exposure_factor,
            })
            if flagged is None:
                decision = "no verdict"
                break
            if flagged:
                decision = "confirmed"
                break
        outcome.classification = decision
        yield from _decision_run(outcome, evidence, user_md)
        logger.info("slot %d (%s): %s", outcome.slot, outcome.sample, decision)
    return outcomes


def _decision_run(outcome: SampleOutcome, evidence: dict[str, Any],
                  user_md: dict[str, Any]) -> MsgGenerator[str]:
    """Record the decision and its evidence in a detector-less run (queryable)."""
    md = {**user_md, "purpose": "pbi_decision", "plan_name": "survey_and_rescan",
          "raw_uid": outcome.raw_uid, "slot": outcome.slot, "sample": outcome.sample,
          "composition": outcome.composition, "classification": outcome.classification,
          "evidence": {**evidence, "rescans": outcome.rescans}}

    @bpp.run_decorator(md=md)
    def inner() -> MsgGenerator[None]:
        yield from bps.null()

    return (yield from inner())
