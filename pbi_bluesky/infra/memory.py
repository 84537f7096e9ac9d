"""Memory held for documents on their way somewhere is bounded in bytes, not in counts.

A Pilatus 1M frame inline in an event is 4 MB: ten thousand queued documents are tens of
GB. The spool's forwarding queue, the Tiled writer's event cache and the bus publisher's
queue each keep their own byte counter, estimated cheaply by :func:`doc_nbytes`, and stay
under a budget (:data:`DEFAULT_MEMORY_BUDGET` each unless configured).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DEFAULT_MEMORY_BUDGET", "DOC_OVERHEAD", "doc_nbytes", "value_nbytes"]

DEFAULT_MEMORY_BUDGET = 256 << 20
"""Default bytes of documents one queue or cache may hold in memory (256 MiB)."""

DOC_OVERHEAD = 512
"""Bytes counted per document besides its array payloads (keys, scalars, timestamps)."""


def value_nbytes(value: Any) -> int:
    """Return the payload bytes of one value: a numpy array's ``nbytes``, else an estimate.

    Lists of numbers (event pages, arrays that arrived as lists) count 8 bytes an item,
    bytes their length; other scalars count nothing (they are in :data:`DOC_OVERHEAD`).
    """
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(value_nbytes(v) if isinstance(v, (np.ndarray, list, tuple, bytes))
                   else 8 for v in value)
    return 0


def doc_nbytes(doc: dict[str, Any]) -> int:
    """Estimate the memory one document holds: the arrays in its ``data`` plus a constant.

    Cheap (no encoding): only ``data`` (events, event pages, datum pages) is walked, where
    frames and curves live; a document's other fields are small.
    """
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        return DOC_OVERHEAD
    return DOC_OVERHEAD + sum(value_nbytes(v) for v in data.values())
