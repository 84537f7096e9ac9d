"""Atomic bookkeeping in Redis: write-once results, fenced coordinator writes, the lease.

Everything that must not happen twice is a Lua script, so it is atomic in Redis:

* :data:`RECORD` (scorer workers): write a frame's result only if its key is new
  (``HSETNX`` on ``run.<uid>.results``), count it in the run ledger, notify the assembler,
  and acknowledge the work item: all or nothing. A redelivered frame therefore finds its
  result present and only acknowledges (counted as a duplicate); no second analysis event
  can come of it.
* :data:`APPLY` (the coordinator): a batch of writes applied only while the caller holds
  the coordinator lease (fencing: a coordinator that lost its lease cannot write).
* the lease itself: ``SET NX PX`` to take it, renew and release only by its holder.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from pbi_bluesky.bus.names import SCORER_GROUP, BusNames
from pbi_bluesky.codec import decode, encode
from pbi_bluesky.profile import Profile
from pbi_bluesky.scoring import FrameResult

__all__ = ["Lease", "Ledger", "NotLeader", "Ops", "decode_result", "encode_result",
           "profile_from_dict", "profile_to_dict"]

logger = logging.getLogger(__name__)

_RECORD_FN = """
local function record(results, run, notify, stats, key, blob, run_uid, stream, group, id)
  local new = redis.call('HSETNX', results, key, blob)
  if new == 1 then
    redis.call('HINCRBY', run, 'done', 1)
    redis.call('XADD', notify, '*', 'kind', 'result', 'run', run_uid, 'key', key)
  else
    redis.call('HINCRBY', stats, 'duplicates', 1)
  end
  if id ~= '' then redis.call('XACK', stream, group, id) end
  return new
end
"""

RECORD = _RECORD_FN + """
-- KEYS: results hash, run hash, results stream, stats, frames stream
-- ARGV: frame key, result blob, run uid, group, entry id
return record(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], KEYS[5],
              ARGV[4], ARGV[5])
"""

_ALLOWED = ("HSET", "HSETNX", "HDEL", "HINCRBY", "SADD", "SREM", "XADD", "XACK", "RPUSH",
            "LTRIM", "SET", "DEL", "EXPIRE")

APPLY = _RECORD_FN + """
-- KEYS[1]: the lease; ARGV[1]: its holder; then ops: name, number of args, args...
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('NOTLEADER lease not held by ' .. ARGV[1])
end
local allowed = {""" + ", ".join(f"{c}=true" for c in _ALLOWED) + """}
local i = 2
local n = 0
while i <= #ARGV do
  local op = ARGV[i]
  local nargs = tonumber(ARGV[i + 1])
  local args = {}
  for j = 1, nargs do args[j] = ARGV[i + 1 + j] end
  if op == 'RESULT' then
    record(args[1], args[2], args[3], args[4], args[5], args[6], args[7], args[8], args[9],
           args[10])
  elseif allowed[op] then
    redis.call(op, unpack(args))
  else
    return redis.error_reply('unknown op ' .. op)
  end
  i = i + 2 + nargs
  n = n + 1
end
return n
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class NotLeader(RuntimeError):
    """The coordinator lease is held by someone else (or expired)."""


class Ops:
    """A batch of writes for :meth:`Ledger.apply` (applied atomically, fenced)."""

    def __init__(self) -> None:
        self.args: list[Any] = []
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, op: str, *args: Any) -> Ops:
        """Append one allowed Redis write ``op args...`` and return the batch (chainable)."""
        if op not in _ALLOWED and op != "RESULT":
            raise ValueError(f"operation {op} is not allowed in a ledger batch")
        self.args += [op, len(args), *args]
        self.count += 1
        return self

    def result(self, names: BusNames, run_uid: str, key: str, blob: bytes) -> Ops:
        """Write one frame's result (write-once; see :data:`RECORD`).

        Parameters
        ----------
        names
            The beamline's key names.
        run_uid
            Start uid of the raw run the frame belongs to.
        key
            The frame's key, :func:`~pbi_bluesky.bus.names.frame_key`.
        blob
            The record, :func:`encode_result`.
        """
        return self.add("RESULT", names.run_results(run_uid), names.run(run_uid),
                        names.results, names.stats, key, blob, run_uid, names.frames,
                        SCORER_GROUP, "")


class Ledger:
    """The scripts bound to one Redis client and one beamline's names."""

    def __init__(self, client: Any, names: BusNames) -> None:
        self.client, self.names = client, names
        self._record = client.register_script(RECORD)
        self._apply = client.register_script(APPLY)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)

    def record(self, run_uid: str, key: str, blob: bytes, entry_id: str | bytes,
               pipe: Any = None) -> Any:
        """Write a result once and acknowledge its work item (see :data:`RECORD`).

        Parameters
        ----------
        run_uid
            Start uid of the raw run the frame belongs to.
        key
            The frame's key, :func:`~pbi_bluesky.bus.names.frame_key`.
        blob
            The record, :func:`encode_result`.
        entry_id
            The work item's entry on the frames stream, acknowledged (``""``: none).
        pipe
            A Redis pipeline to queue the call on (default: run it now).
        """
        n = self.names
        return self._record(keys=[n.run_results(run_uid), n.run(run_uid), n.results, n.stats,
                                  n.frames],
                            args=[key, blob, run_uid, SCORER_GROUP, entry_id], client=pipe)

    def apply(self, holder: str, ops: Ops) -> int:
        """Apply a batch of writes if ``holder`` holds the lease; else :class:`NotLeader`."""
        import redis

        if not len(ops):
            return 0
        try:
            return int(self._apply(keys=[self.names.lease], args=[holder, *ops.args]))
        except redis.ResponseError as exc:
            if "NOTLEADER" in str(exc):
                raise NotLeader(str(exc)) from exc
            raise


class Lease:
    """The coordinator lease, renewed by its own thread while its holder makes progress.

    The holder calls :meth:`progress` whenever it gets on (a batch handled, a document
    written, an idle read returned). The renewal thread renews the lease only while the
    last progress is younger than ``stuck_s``: a holder stuck in a request stops renewing,
    steps down, and another worker takes over within ``ttl_s``.

    Parameters
    ----------
    ledger
        The scripts of the broker holding the lease.
    holder
        Who holds it (the worker's name).
    ttl_s
        The lease expires this long after the last renewal (a dead holder is replaced
        after at most this long). Renewed every ``ttl_s / 3``; a holder that cannot renew
        for ``ttl_s / 2`` steps down by itself.
    stuck_s
        A holder without progress for this long is stuck (default ``3 * ttl_s``: a slow
        Tiled write under load is not a stuck one).
    """

    def __init__(self, ledger: Ledger, holder: str, ttl_s: float = 10.0,
                 stuck_s: float | None = None) -> None:
        self.ledger, self.holder, self.ttl_ms = ledger, holder, int(ttl_s * 1000)
        self.stuck_s = float(stuck_s) if stuck_s is not None else 3.0 * float(ttl_s)
        self.held = threading.Event()
        self._stop = threading.Event()
        self._last_ok = 0.0
        self._progress = time.monotonic()
        self.stuck = 0
        """How many times this holder stepped down because it made no progress."""
        self._thread: threading.Thread | None = None

    def progress(self) -> None:
        """Say the holder got on (cheap: one clock read); see the class docstring."""
        self._progress = time.monotonic()

    def try_acquire(self) -> bool:
        """Take the lease if it is free (or already ours)."""
        client = self.ledger.client
        key = self.ledger.names.lease
        ok = bool(client.set(key, self.holder, nx=True, px=self.ttl_ms))
        if not ok:
            ok = bool(self.ledger._renew(keys=[key], args=[self.holder, self.ttl_ms]))
        if ok:
            self._last_ok = self._progress = time.monotonic()
            self.held.set()
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                                name="pbi-bus-lease")
                self._thread.start()
        return ok

    def _renew_loop(self) -> None:
        key = self.ledger.names.lease
        while not self._stop.wait(self.ttl_ms / 3000.0):
            idle = time.monotonic() - self._progress
            if idle > self.stuck_s:
                self.stuck += 1
                logger.error("%s made no progress for %.1f s (stuck in a request?): it stops "
                             "renewing the coordinator lease; another worker takes over",
                             self.holder, idle)
                self.held.clear()
                return
            try:
                ok = bool(self.ledger._renew(keys=[key], args=[self.holder, self.ttl_ms]))
            except Exception as exc:  # noqa: BLE001 - the broker may be away for a while
                logger.warning("coordinator lease renewal failed: %s", exc)
                ok = time.monotonic() - self._last_ok < self.ttl_ms / 2000.0
                if ok:
                    continue
            if ok:
                self._last_ok = time.monotonic()
            else:
                logger.warning("%s lost the coordinator lease", self.holder)
                self.held.clear()
                return

    def release(self) -> None:
        """Give the lease up (only if held by us)."""
        self._stop.set()
        self.held.clear()
        try:
            self.ledger._release(keys=[self.ledger.names.lease], args=[self.holder])
        except Exception:  # noqa: BLE001 - it expires anyway
            logger.debug("lease release failed", exc_info=True)


# -- result records -----------------------------------------------------------------------
def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """Return a profile as a mapping the wire codec carries (arrays, metadata, provenance)."""
    return {"q": profile.q_inv_angstrom, "intensity": profile.intensity,
            "sigma": profile.sigma, "metadata": _plain(profile.metadata),
            "provenance": _plain(profile.provenance)}


def profile_from_dict(d: dict[str, Any]) -> Profile:
    """Return the profile of a mapping written by :func:`profile_to_dict`."""
    return Profile(np.asarray(d["q"]), np.asarray(d["intensity"]), np.asarray(d["sigma"]),
                   metadata=dict(d.get("metadata") or {}),
                   provenance=dict(d.get("provenance") or {}))


def _plain(value: Any) -> Any:
    """Provenance made of what the wire codec carries (unknown objects become text)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool, type(None), bytes, np.ndarray, np.generic)):
        return value
    return repr(value)


def encode_result(result: FrameResult, resampled: tuple[np.ndarray, np.ndarray] | None, *,
                  profile: Profile | None = None, explanation: tuple[str, dict] | None = None,
                  worker: str = "", extra: dict[str, Any] | None = None) -> bytes:
    """Return one frame's result as stored in ``run.<uid>.results``.

    Parameters
    ----------
    result
        The frame's verdict (stored as a plain mapping).
    resampled
        The frame's (intensity, sigma) on the model's q grid, or None.
    profile
        A reduced profile to keep with it (the worker keeps reference frames').
    explanation
        ``(status, features)`` of the frame's attribution, or None.
    worker
        Name of the worker that made it.
    extra
        More entries for the record.
    """
    record: dict[str, Any] = {"result": _plain(asdict(result)), "worker": worker,
                              "t": time.time()}
    if resampled is not None:
        record["intensity"], record["sigma"] = (np.asarray(resampled[0]),
                                                np.asarray(resampled[1]))
    if profile is not None:
        record["profile"] = profile_to_dict(profile)
    if explanation is not None:
        record["explanation"] = {"status": explanation[0], "features": explanation[1]}
    record.update(extra or {})
    return encode(record)


def decode_result(blob: bytes) -> dict[str, Any]:
    """Decode a record written by :func:`encode_result`.

    ``result`` becomes a FrameResult, ``resampled`` an (intensity, sigma) pair or None.
    """
    record = decode(blob)
    record["result"] = FrameResult(**record["result"])
    record["resampled"] = ((record.pop("intensity"), record.pop("sigma"))
                           if "intensity" in record else None)
    return record
