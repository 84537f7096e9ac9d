"""Bluesky documents as bus records: what the publisher puts on the broker.

* :func:`refuse_large`: inline arrays above the bus limit are taken out of an event (the
  refusal recorded in it as ``pbi_refused``), so the frame still reaches the scorers and is
  accounted for as failed with a reason, instead of a multi-megabyte entry on the stream;
* :data:`SEND_SCRIPT`: the Lua script that adds a batch of records to the documents stream
  atomically, each at most once per publisher (see :mod:`pbi_bluesky.bus.publisher`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DEFAULT_INLINE_LIMIT", "SEND_SCRIPT", "refuse_large"]

DEFAULT_INLINE_LIMIT = 1 << 20
"""Largest inline array (bytes) put on the bus; larger frames must travel by reference."""
SEND_SCRIPT = """
-- KEYS[1] the documents stream, KEYS[2] the last sequence number taken from this publisher;
-- ARGV[1] maxlen (0: none), ARGV[2] seconds KEYS[2] lives, then (seq, run, name, doc) per
-- record. Atomic: all records added or none; a record numbered at or below the last one
-- taken is a repeat of a call whose reply was lost and is skipped (seq 0: not numbered).
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local maxlen = tonumber(ARGV[1])
local added = 0
for i = 3, #ARGV, 4 do
  local seq = tonumber(ARGV[i])
  if seq == 0 or seq > last then
    if maxlen > 0 then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
                 'run', ARGV[i + 1], 'name', ARGV[i + 2], 'doc', ARGV[i + 3])
    else
      redis.call('XADD', KEYS[1], '*', 'run', ARGV[i + 1], 'name', ARGV[i + 2],
                 'doc', ARGV[i + 3])
    end
    if seq > last then last = seq end
    added = added + 1
  end
end
if last > 0 then redis.call('SET', KEYS[2], last, 'EX', ARGV[2]) end
return added
"""
"""Idempotent batch XADD (see :mod:`pbi_bluesky.bus.publisher`)."""


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (list, tuple)) and value and not isinstance(value[0], (str, bytes)):
        try:
            return int(np.asarray(value).nbytes)
        except (ValueError, TypeError):
            return 0
    return 0


def refuse_large(name: str, doc: dict, inline_limit: int) -> tuple[dict, dict[str, str], int]:
    """Take the inline arrays above ``inline_limit`` bytes out of an event or event page.

    Returns
    -------
    doc
        The document, or a copy whose refused values are None, with ``pbi_refused``
        (data key -> reason, saying to publish large frames by reference).
    refused
        Data key -> reason; empty when nothing was refused.
    values
        How many values were refused (an event page counts one per row and key).
    """
    if name not in ("event", "event_page"):
        return doc, {}, 0
    data = doc.get("data") or {}
    refused = {}
    for key, value in data.items():
        values = value if name == "event_page" and isinstance(value, list) else [value]
        size = max((_nbytes(v) for v in values), default=0)
        if size > inline_limit:
            refused[key] = (f"inline array {key!r} of {size} bytes is over the bus limit "
                            f"of {inline_limit} bytes: not published; publish large "
                            "frames by reference (Resource/Datum or StreamResource "
                            "pointing at HDF5 on shared storage)")
    if not refused:
        return doc, {}, 0
    count = len(refused) * (len(doc.get("seq_num", [])) if name == "event_page" else 1)
    new_data = {k: (([None] * len(v) if name == "event_page" else None)
                    if k in refused else v) for k, v in data.items()}
    return {**doc, "data": new_data, "pbi_refused": refused}, refused, count
