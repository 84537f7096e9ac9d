"""Frames of a raw run read back from Tiled, as the scorer's inputs.

Tiled serves every frame as an array, whatever the run recorded: inline in the events,
Resource/Datum files (stock ophyd) or StreamResource files (ophyd-async) under the server's
readable folders. :func:`run_frames` turns a run's image streams into batches of
:class:`~pbi_bluesky.scoring.reader.FrameInput` for
:meth:`~pbi_bluesky.scoring.engine.FrameScorer.process`: re-scoring (:mod:`pbi_bluesky.rescore`),
training from Tiled and scoring a selection (:mod:`pbi_bluesky.training.tiled`) read frames
the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pbi_bluesky.scoring.frames import AssetRegistry
from pbi_bluesky.scoring.reader import FrameInput
from pbi_bluesky.scoring.streams import FrameParts

__all__ = ["run_frames"]


def run_frames(core: Any, raw: Any, raw_uid: str, chunk: int,
               background: Any) -> Iterator[list[FrameInput]]:
    """Yield the raw run's frames as FrameInputs, ``chunk`` at a time, read from Tiled.

    Parameters
    ----------
    core
        A :class:`~pbi_bluesky.scoring.engine.FrameScorer` (its key roles pick the image,
        I0 and transmission of each stream).
    raw
        The run's Tiled node.
    raw_uid
        Its uid.
    chunk
        Frames per batch (only one batch of images is held at a time).
    background
        The empty-cell profile to subtract (``None``: none).

    Yields
    ------
    list of FrameInput
        One batch of frames, in order.
    """
    start = dict(raw.metadata["start"])
    for stream_name in list(raw):
        stream = raw[stream_name]
        roles = core.roles({"data_keys": dict(stream.metadata.get("data_keys") or {})})
        if roles is None:
            continue
        keys = [k for k in (roles.image, roles.monitor, roles.transmission) if k]
        image = stream[roles.image] if roles.image else None
        if "seq_num" in stream:
            seq_nums = [int(s) for s in np.asarray(stream["seq_num"].read())]
        elif image is not None:  # StreamDatum only (no event): frames count from 1
            seq_nums = list(range(1, int(image.shape[0]) + 1))
        else:
            continue
        scalars = {k: np.asarray(stream[k].read()) for k in keys if k != roles.image}
        for lo in range(0, len(seq_nums), chunk):
            hi = min(lo + chunk, len(seq_nums))
            block = np.asarray(image[lo:hi]) if image is not None else None
            batch = []
            for i in range(lo, hi):
                values = {k: ("inline", v[i]) for k, v in scalars.items()}
                if block is not None:
                    values[roles.image] = ("inline", block[i - lo])
                batch.append(FrameInput(raw_uid, start, roles, FrameParts(seq_nums[i], values),
                                        AssetRegistry(), background=background))
            yield batch
