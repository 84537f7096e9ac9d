"""Which data keys of a descriptor are the frame, I0 and transmission, and joining them.

A frame is complete when its image and its readings have arrived. They may come in one
event (stock ophyd: datum id + readings), or separately (ophyd-async: one StreamDatum per
dataset, the readings being NDAttribute datasets of the same HDF5 file; or a StreamDatum
image with readings in the event). :class:`FrameJoiner` collects the parts per sequence
number. Keys are configured, or found when exactly one candidate exists; ambiguity is never
resolved by guessing: every frame of the stream then fails with a reason naming the
candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pbi_bluesky.scoring.frames import image_keys

__all__ = ["FrameJoiner", "FrameParts", "Roles", "resolve_roles"]

MONITOR_SUFFIXES = ("i0", "monitor")
TRANSMISSION_SUFFIXES = ("transmission",)


@dataclass
class Roles:
    """The data keys of one image stream, or why it cannot be scored."""

    image: str | None
    monitor: str | None = None
    transmission: str | None = None
    problem: str = ""
    """Non-empty: every frame of this stream fails with this reason."""
    shape: tuple[int, ...] | None = None
    images: tuple[str, ...] = ()
    """Every 2D image key of the stream (a frame arrives with any of them)."""

    @property
    def required(self) -> tuple[str, ...]:
        """Keys a frame needs before it can be reduced (or, with a problem, failed)."""
        if self.problem:
            return self.images[:1] if self.image is None else (self.image,)
        return tuple(k for k in (self.image, self.monitor, self.transmission) if k)

    def complete(self, keys: Any) -> bool:
        """Return whether a frame holding parts for ``keys`` can be reduced.

        For a stream with a problem: whether it can be failed.
        """
        if self.problem:
            return any(k in keys for k in self.images)
        return all(k in keys for k in self.required)

    @property
    def relevant(self) -> set[str]:
        """Keys this stream's frames are made of."""
        return {*self.images, *(k for k in (self.monitor, self.transmission) if k)}


def _pick(data_keys: dict[str, Any], configured: str | None, suffixes: tuple[str, ...],
          what: str, option: str, exclude: set[str]) -> tuple[str | None, str]:
    """(key, problem) for one role."""
    if configured:
        if configured in data_keys:
            return configured, ""
        return None, (f"configured {option}={configured!r} is not a data key of this stream "
                      f"(keys: {sorted(data_keys)})")
    cands = sorted(k for k in data_keys if k not in exclude
                   and k.lower().endswith(suffixes) and not data_keys[k].get("shape"))
    if len(cands) == 1:
        return cands[0], ""
    if not cands:
        return None, (f"no {what} reading in this stream (no scalar data key ending in "
                      f"{'/'.join(suffixes)}); configure {option}=")
    return None, (f"{len(cands)} candidate {what} keys {cands}: ambiguous, configure "
                  f"{option}=")


def resolve_roles(descriptor: dict[str, Any], *, image_key: str | None = None,
                  monitor_key: str | None = None, transmission_key: str | None = None,
                  transmission_required: bool = True, monitor_required: bool = True
                  ) -> Roles | None:
    """Return the roles of a descriptor's keys; ``None`` for a stream without images.

    Parameters
    ----------
    descriptor
        An event descriptor.
    image_key, monitor_key, transmission_key
        Configured keys (``None``: find the single candidate).
    transmission_required, monitor_required
        If false, a stream without that reading is not a problem here (the scorer takes
        it from elsewhere: transmission 1, or the start document when asked to).
    """
    data_keys = descriptor.get("data_keys", {})
    images = image_keys(descriptor)
    if image_key:
        if image_key not in data_keys:
            if not images:
                return None  # another stream (baseline, monitors): not ours
            return Roles(None, problem=f"configured image_key={image_key!r} is not a data "
                                       f"key of this stream (images here: {images})",
                         images=tuple(images))
        image = image_key
    elif not images:
        return None
    elif len(images) > 1:
        return Roles(None, problem=f"{len(images)} 2D image keys {images}: ambiguous, "
                                   "configure image_key=", images=tuple(images))
    else:
        image = images[0]
    shape = tuple(data_keys[image].get("shape") or ()) or None
    monitor, p_mon = _pick(data_keys, monitor_key, MONITOR_SUFFIXES, "incident-flux (I0)",
                           "monitor_key", {image})
    trans, p_tr = _pick(data_keys, transmission_key, TRANSMISSION_SUFFIXES, "transmission",
                        "transmission_key", {image, monitor or ""})
    if not transmission_required and trans is None and not transmission_key:
        p_tr = ""
    if not monitor_required and monitor is None and not monitor_key:
        p_mon = ""
    problem = "; ".join(p for p in (p_mon, p_tr) if p)
    return Roles(image, monitor, trans, problem, shape, tuple(dict.fromkeys([image, *images])))


@dataclass
class FrameParts:
    """What has arrived of one frame (``seq_num``) of one stream."""

    seq_num: int
    values: dict[str, Any] = field(default_factory=dict)
    """data key -> inline value, ``("datum", id)`` or ``("stream", (resource, index))``."""
    shed: bool = False


class FrameJoiner:
    """Collects the parts of each frame of one image stream until it is complete."""

    def __init__(self, roles: Roles) -> None:
        self.roles = roles
        self.pending: dict[int, FrameParts] = {}
        self.received = 0

    def _parts(self, seq: int) -> FrameParts:
        parts = self.pending.get(seq)
        if parts is None:
            parts = self.pending[seq] = FrameParts(seq)
            self.received += 1
        return parts

    def add(self, seq: int, key: str, value: Any) -> FrameParts | None:
        """Record one part; returns the frame once it is complete (and forgets it)."""
        if key not in self.roles.relevant:
            return None
        parts = self._parts(seq)
        parts.values[key] = value
        return self._pop_if_complete(parts)

    def add_event(self, seq: int, data: dict[str, Any]) -> FrameParts | None:
        """Record the parts an event carries."""
        relevant = {k: v for k, v in data.items() if k in self.roles.relevant}
        if not relevant:
            return None
        parts = self._parts(seq)
        parts.values.update(relevant)
        return self._pop_if_complete(parts)

    def mark_shed(self, seq: int) -> None:
        """Mark that a part of this frame was dropped on the way in (queue full)."""
        self._parts(seq).shed = True

    def _pop_if_complete(self, parts: FrameParts) -> FrameParts | None:
        if parts.shed:
            return None
        if self.roles.complete(parts.values):
            return self.pending.pop(parts.seq_num)
        return None

    def drain(self) -> list[FrameParts]:
        """Return, and forget, the frames that never completed (called at the run's stop)."""
        left = sorted(self.pending.values(), key=lambda p: p.seq_num)
        self.pending.clear()
        return left
