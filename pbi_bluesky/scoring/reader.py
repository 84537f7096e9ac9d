"""Reading one frame: its image, I0 and transmission out of documents and files, checked.

:class:`FrameReader` knows which data keys are the image, I0 and transmission
(:mod:`~pbi_bluesky.scoring.streams`), where their values come from (inline in the event,
a Resource/Datum or a StreamResource: :mod:`~pbi_bluesky.scoring.frames`, through the
batch's :class:`~pbi_bluesky.scoring.reads.ReadCache`), and what makes a frame unusable
before any reduction: no I0 or a non-positive one, a transmission outside (0, 1.5], no
geometry, an empty image, a recipe the model does not know, no sample thickness. Each is a
:class:`~pbi_bluesky.scoring.frames.FrameError` whose message becomes the frame's recorded
reason. :class:`~pbi_bluesky.scoring.engine.FrameScorer` reduces and scores what it reads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pbi_bluesky.profile import Profile
from pbi_bluesky.reduction.checks import MAX_TRANSMISSION
from pbi_bluesky.scoring.frames import AssetRegistry, FrameError
from pbi_bluesky.scoring.reads import ReadCache
from pbi_bluesky.scoring.result import FrameResult
from pbi_bluesky.scoring.streams import FrameParts, Roles, resolve_roles

__all__ = ["INHERIT", "MAX_TRANSMISSION", "FrameInput", "FrameReader", "Reading", "base_result",
           "poni_text"]

logger = logging.getLogger(__name__)


class _Inherit:
    def __repr__(self) -> str:
        return "INHERIT"


INHERIT: Any = _Inherit()
"""A frame's background: the scorer's running one (updated by empty-cell frames)."""


@dataclass
class FrameInput:
    """One joined frame and what is needed to read it."""

    raw_uid: str
    start: dict[str, Any]
    roles: Roles
    parts: FrameParts
    assets: AssetRegistry
    background: Profile | None | Any = INHERIT
    """Empty-cell profile to subtract: a Profile, ``None`` (none), or :data:`INHERIT`."""


@dataclass
class Reading:
    """One frame read and checked, ready to reduce (:meth:`FrameReader.read`)."""

    result: FrameResult
    geometry: str
    """PONI text of the frame's geometry (configured, else the run's start document)."""
    image: np.ndarray
    i0: float
    transmission: float
    thickness: float | None
    is_cell: bool


def poni_text(poni: str | Path | None) -> str | None:
    """PONI text from a path or from the text itself."""
    if poni is None:
        return None
    text = str(poni)
    if "Distance" in text and "\n" in text:
        return text
    return Path(poni).read_text()


def base_result(frame: FrameInput, status: str = "failed", reason: str = "") -> FrameResult:
    """Return a result carrying the run's sample metadata (no verdict yet)."""
    start = frame.start
    return FrameResult(frame.raw_uid, frame.parts.seq_num, status, reason=reason,
                       expected_composition=str(start.get("composition") or ""),
                       metadata={"sample": start.get("sample"), "slot": start.get("slot")})


class FrameReader:
    """Read and check frames (see the module docstring).

    Parameters
    ----------
    recipes
        The recipes the model knows (a frame expecting another one fails); ``None``: any
        recipe (reduction without a model, e.g. for training), but a sample must name one.
    image_key, monitor_key, transmission_key
        Data keys of the frame, I0 and transmission (``None``: the single candidate of
        the descriptor, :func:`~pbi_bluesky.scoring.streams.resolve_roles`).
    poni
        Geometry (PONI file path or text) for every run; ``None``: each run's start
        document must carry it (``geometry``).
    data_roots
        Folders frame files named by documents may be read from.
    transmission_required
        If false, a stream without a transmission reading is read with T = 1.
    monitor_from_start
        Take I0/transmission from start-document keys ``i0`` and ``transmission`` when a
        stream has no such readings.
    """

    def __init__(
        self,
        recipes: Sequence[str] | None,
        *,
        image_key: str | None = None,
        monitor_key: str | None = None,
        transmission_key: str | None = None,
        poni: str | Path | None = None,
        data_roots: Any = (),
        transmission_required: bool = True,
        monitor_from_start: bool = False,
    ) -> None:
        self.recipes = None if recipes is None else tuple(recipes)
        self.keys = {"image_key": image_key, "monitor_key": monitor_key,
                     "transmission_key": transmission_key}
        self.transmission_required = bool(transmission_required)
        self.monitor_from_start = bool(monitor_from_start)
        self.poni_text = poni_text(poni)
        self.data_roots = tuple(str(Path(r)) for r in data_roots)

    def roles(self, descriptor: dict[str, Any]) -> Roles | None:
        """Return the key roles of a descriptor (``None``: not an image stream)."""
        return resolve_roles(descriptor, transmission_required=self.transmission_required
                             and not self.monitor_from_start,
                             monitor_required=not self.monitor_from_start, **self.keys)

    @staticmethod
    def value(frame: FrameInput, value: Any, cache: ReadCache | None = None) -> Any:
        """Return one part of a frame.

        The part is ``("inline", x)``, ``("refused", why)``, ``("datum", id)``
        or ``("stream", (stream resource, index))``.
        """
        kind, payload = value
        if kind == "inline":
            return payload
        if kind == "refused":
            raise FrameError(str(payload))
        if kind == "datum":
            return frame.assets.frame_from_datum(payload, cache)
        return frame.assets.value_from_stream(*payload, cache=cache)

    def _scalar(self, frame: FrameInput, key: str | None, what: str, start_key: str,
                cache: ReadCache | None = None) -> float | None:
        if key is None:
            if self.monitor_from_start and frame.start.get(start_key) is not None:
                return float(frame.start[start_key])
            return None
        raw = np.asarray(self.value(frame, frame.parts.values[key], cache), dtype=float)
        if raw.size != 1:
            raise FrameError(f"{what} reading {key!r} has {raw.size} values, expected 1")
        return float(raw.reshape(-1)[0])

    def read(self, frame: FrameInput, cache: ReadCache | None = None) -> Reading:
        """Read and check one frame and its readings (no reduction yet).

        Raises :class:`~pbi_bluesky.scoring.frames.FrameError` with the reason the frame cannot be
        reduced.
        """
        roles, start = frame.roles, frame.start
        if roles.problem:
            raise FrameError(roles.problem)
        monitor = self._scalar(frame, roles.monitor, "I0", "i0", cache)
        if monitor is None:
            raise FrameError("no incident-flux (I0) reading for this frame")
        if not (math.isfinite(monitor) and monitor > 0):
            raise FrameError(f"I0 reading {monitor!r} is not a positive number")
        transmission = self._scalar(frame, roles.transmission, "transmission",
                                    "transmission", cache)
        if transmission is None:
            if self.transmission_required:
                raise FrameError("no transmission reading for this frame")
            transmission = 1.0
        if not (math.isfinite(transmission) and 0 < transmission <= MAX_TRANSMISSION):
            raise FrameError(f"transmission {transmission!r} is not in (0, {MAX_TRANSMISSION}]")
        poni = self.poni_text or start.get("geometry")
        if not poni:
            raise FrameError("no geometry: configure poni= (beamline.yaml geometry.poni) or "
                             "record PONI text as 'geometry' in the start document")
        image = np.asarray(self.value(frame, frame.parts.values[roles.image], cache))
        if image.ndim == 1 and roles.shape and len(roles.shape) >= 2:
            image = image.reshape(roles.shape[-2:])
        if image.ndim == 3 and image.shape[0] == 1:
            image = image[0]
        if image.size == 0:
            raise FrameError("frame is empty")
        is_cell = start.get("sample_type") == "empty_cell"
        thickness = start.get("thickness_cm")
        if not is_cell:
            expected = start.get("composition")
            if self.recipes is None and not expected:
                raise FrameError("no recipe ('composition') in the start document")
            if self.recipes is not None and expected is not None and \
                    expected not in self.recipes:
                raise FrameError(f"expected recipe {expected!r} unknown to the model "
                                 f"({list(self.recipes)})")
            if thickness is None:
                raise FrameError("no sample thickness ('thickness_cm') in the start "
                                 "document: absolute intensity unknown")
        return Reading(base_result(frame), str(poni), image, monitor, transmission,
                       None if is_cell else float(thickness), is_cell)

    @staticmethod
    def prefetch(frames: list[FrameInput], cache: ReadCache) -> None:
        """Read the image stacks of a batch into ``cache``.

        Each file is opened once, neighbouring frames in one slice; anything unreadable is left to
        :meth:`read`,
        which fails that frame with the reason.
        """
        wanted: dict[int, tuple[AssetRegistry, list[tuple[str, Any]]]] = {}
        for frame in frames:
            value = frame.parts.values.get(frame.roles.image) if frame.roles.image else None
            if value is not None and value[0] in ("stream", "datum"):
                entry = wanted.setdefault(id(frame.assets), (frame.assets, []))
                entry[1].append(value)
        for assets, items in wanted.values():
            try:
                assets.prefetch(items, cache)
            except Exception:  # noqa: BLE001 - only a speed-up: each frame's read reports
                logger.debug("prefetch failed; frames are read one by one", exc_info=True)
