"""The frame-scoring engine shared by every scorer.

The scorers are the live callback (:mod:`pbi_bluesky.live`), the bus workers
(:mod:`pbi_bluesky.bus`) and re-scoring (:mod:`pbi_bluesky.rescore`).

* :mod:`~pbi_bluesky.scoring.streams`: which keys of a stream are the image, I0 and
  transmission, and how a frame's parts are joined;
* :mod:`~pbi_bluesky.scoring.frames`: getting frames out of documents (inline arrays,
  Resource/Datum, StreamResource/StreamDatum), with paths confined to the data roots;
* :mod:`~pbi_bluesky.scoring.reads`: batch reads of HDF5 frames into reused memory;
* :mod:`~pbi_bluesky.scoring.reader`: :class:`FrameReader`, a frame and its I0 and
  transmission out of documents and files, checked;
* :mod:`~pbi_bluesky.scoring.engine`: :class:`FrameScorer`, reduce and score a batch;
* :mod:`~pbi_bluesky.scoring.pickup`: which model scores a run (the model registry's
  current version, picked up at run boundaries);
* :mod:`~pbi_bluesky.scoring.settings`: ``beamline.yaml`` to :class:`FrameScorer` arguments;
* :mod:`~pbi_bluesky.scoring.analysis`: the analysis run written for each raw run;
* :mod:`~pbi_bluesky.scoring.result`: :class:`FrameResult`, what happened to one frame.
"""

from pbi_bluesky.scoring.analysis import AnalysisRun, explain_frame
from pbi_bluesky.scoring.engine import (
    ANALYSIS_STREAM,
    ATTRIBUTION_STREAM,
    FrameInput,
    FrameScorer,
    Outcome,
)
from pbi_bluesky.scoring.frames import AssetRegistry, FrameError, PathNotAllowed, image_keys
from pbi_bluesky.scoring.reader import FrameReader
from pbi_bluesky.scoring.result import FrameResult
from pbi_bluesky.scoring.streams import FrameParts, Roles

__all__ = [
    "ANALYSIS_STREAM",
    "ATTRIBUTION_STREAM",
    "AnalysisRun",
    "AssetRegistry",
    "FrameError",
    "FrameInput",
    "FrameParts",
    "FrameReader",
    "FrameResult",
    "FrameScorer",
    "Outcome",
    "PathNotAllowed",
    "Roles",
    "explain_frame",
    "image_keys",
]
