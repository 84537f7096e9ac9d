"""The per-frame core of live scoring: reduce and score batches of frames, whoever feeds them.

:class:`FrameScorer` holds the model and the reduction settings; it turns joined frames
(:class:`~pbi_bluesky.scoring.reader.FrameInput`: the run's start document, the stream's
key roles, the frame's parts and the run's assets) into :class:`Outcome` records (a
:class:`FrameResult` with its profile and resampled curve). Reading a frame and its
readings out of documents and files, and refusing what cannot be reduced, is its
:class:`~pbi_bluesky.scoring.reader.FrameReader`'s job; here a batch is reduced (one
batch-integrator call per geometry and background) and scored (one model pass).
Which model scores a run (the model registry's current version, picked up at run
boundaries) is :mod:`~pbi_bluesky.scoring.pickup`'s job; :meth:`FrameScorer.from_settings`
builds a scorer from ``beamline.yaml`` (:mod:`~pbi_bluesky.scoring.settings`). The callers
share it, so they give the same results:

* :class:`~pbi_bluesky.live.LiveScorer`, in-process, fed by a RunEngine;
* the scorer workers of the document bus (:mod:`pbi_bluesky.bus`), fed per frame by a
  broker;
* re-scoring (:mod:`pbi_bluesky.rescore`), fed from Tiled.

Batch invariance: the CNN runs in float32, and oneDNN picks its convolution kernels by
batch size, so the same curve scored in a batch of 3 or alone differs from a batch of 16
by up to ~2e-6 (measured here: batch sizes of 12 and more gave bit-identical rows, smaller
ones did not). Every model call is therefore padded to at least ``min_batch_rows`` curves
(copies of the first, discarded): a frame's score then does not depend on which other
frames happened to share its batch, in-process or on any bus worker.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pbi_bluesky.config import BeamlineConfig
from pbi_bluesky.models import AnomalyDetector
from pbi_bluesky.profile import Profile
from pbi_bluesky.reduction import (
    AbsoluteScale,
    Reducer,
    as_frame,
    load_absolute_scale,
    load_geometry_text,
)
from pbi_bluesky.scoring.analysis import AnalysisRun
from pbi_bluesky.scoring.pickup import ModelPickup, load_model
from pbi_bluesky.scoring.reader import (
    INHERIT,
    FrameInput,
    FrameReader,
    Reading,
    base_result,
    poni_text,
)
from pbi_bluesky.scoring.reads import FrameBuffers, ReadCache, stack_rows
from pbi_bluesky.scoring.result import FrameResult
from pbi_bluesky.scoring.settings import settings_kwargs
from pbi_bluesky.scoring.streams import Roles

__all__ = ["ANALYSIS_STREAM", "ATTRIBUTION_STREAM", "INHERIT", "MIN_BATCH_ROWS",
           "FrameInput", "FrameScorer", "Outcome", "Reading", "load_model", "poni_text",
           "settings_kwargs"]

logger = logging.getLogger(__name__)

ANALYSIS_STREAM = "pbi_anomaly"
ATTRIBUTION_STREAM = "pbi_attribution"
MIN_BATCH_ROWS = 16
"""Fewest curves per model call (see the module docstring)."""


@dataclass
class Outcome:
    """What became of one frame."""

    frame: FrameInput
    result: FrameResult
    profile: Profile | None = None
    resampled: tuple[np.ndarray, np.ndarray] | None = None
    """The curve on the model's q grid (intensity, sigma), when it covers the grid."""

    @property
    def explain(self) -> bool:
        """Whether the frame was flagged (and so wants an attribution)."""
        return self.result.status == "scored" and bool(self.result.is_anomaly)


class FrameScorer:
    """Reduce and score frames (see the module docstring).

    Parameters are those of :class:`~pbi_bluesky.live.LiveScorer` that concern one frame:
    ``model``, ``image_key``, ``monitor_key``, ``transmission_key``, ``poni``, ``mask``,
    ``dark``, ``flat``, ``polarization_factor``, ``absolute_scale``, ``background``,
    ``data_roots``, ``transmission_required``, ``monitor_from_start``, ``npt``; plus
    ``min_batch_rows`` (fewest curves per model call) and ``reduce_only``: no model at all
    (``model`` is ignored), frames are read, checked and reduced exactly as for scoring and
    their outcomes have status ``"reduced"`` with the profile (what training from Tiled
    learns from); a sample frame must then name its recipe, any recipe. ``registry``: a
    :class:`~pbi_bluesky.models.registry.ModelRegistry` folder whose current model, when one
    is promoted, replaces ``model`` (which stays the fallback), and which
    :meth:`at_run_start` follows from run to run (:mod:`pbi_bluesky.scoring.pickup`).
    """

    def __init__(
        self,
        model: AnomalyDetector | str | Path | None = None,
        *,
        image_key: str | None = None,
        monitor_key: str | None = None,
        transmission_key: str | None = None,
        poni: str | Path | None = None,
        mask: Any = None,
        dark: Any = None,
        flat: Any = None,
        polarization_factor: float | None = 0.99,
        absolute_scale: AbsoluteScale | str | Path | None = None,
        background: Profile | None = None,
        data_roots: Any = (),
        transmission_required: bool = True,
        monitor_from_start: bool = False,
        npt: int = 400,
        min_batch_rows: int = MIN_BATCH_ROWS,
        reduce_only: bool = False,
        registry: str | Path | None = None,
    ) -> None:
        self.pickup = (None if registry is None or reduce_only
                       else ModelPickup(registry, model))
        if self.pickup is not None:
            model = self.pickup.first_model()
        self.model: AnomalyDetector | None = None if reduce_only else load_model(model)
        self.model_info = {} if self.model is None else dict(self.model.bundle_info)
        self.reader = FrameReader(None if self.model is None else self.model.recipes,
                                  image_key=image_key,
                                  monitor_key=monitor_key, transmission_key=transmission_key,
                                  poni=poni, data_roots=data_roots,
                                  transmission_required=transmission_required,
                                  monitor_from_start=monitor_from_start)
        self.mask = None if mask is None else as_frame(mask).astype(bool)
        self.dark = None if dark is None else as_frame(dark)
        self.flat = None if flat is None else as_frame(flat)
        self.polarization_factor = polarization_factor
        self.absolute_scale = (load_absolute_scale(absolute_scale)
                               if isinstance(absolute_scale, (str, Path)) else absolute_scale)
        self.npt = int(npt)
        self.background = background
        self.min_batch_rows = max(1, int(min_batch_rows))
        self._reducers: dict[str, Reducer] = {}
        self._reducer_lock = threading.Lock()
        self._warned_no_background = False
        self._buffers = FrameBuffers()

    @classmethod
    def from_settings(cls, settings: BeamlineConfig | str | Path, *, mode: str | None = None,
                      **overrides: Any) -> FrameScorer:
        """Return a scorer configured from a beamline's settings.

        See :func:`settings_kwargs`; ``overrides`` win.
        """
        kwargs = settings_kwargs(settings, mode=mode)
        kwargs.update(overrides)
        return cls(**kwargs)

    settings_kwargs = staticmethod(settings_kwargs)

    # -- which model (the registry's pick-up: pbi_bluesky.scoring.pickup) -----------------
    def at_run_start(self) -> FrameScorer:
        """Return the scorer for a run that starts now.

        ``self`` without a registry; else :meth:`ModelPickup.at_run_start
        <pbi_bluesky.scoring.pickup.ModelPickup.at_run_start>`: ``self`` or a copy holding
        the registry's newly current model. Call it at run boundaries only: a run keeps
        the scorer it started with.
        """
        return self if self.pickup is None else self.pickup.at_run_start(self)

    def registry_pin(self) -> str | None:
        """Return the registry version a run starting now is scored with, as text.

        ``None`` without a registry; else :meth:`ModelPickup.pin
        <pbi_bluesky.scoring.pickup.ModelPickup.pin>` (``"0"``: the fallback model).
        """
        return None if self.pickup is None else self.pickup.pin()

    def for_version(self, number: int | str | None) -> FrameScorer:
        """Return a scorer with registry version ``number`` (``None``, 0 or "0": the fallback).

        ``self`` without a registry; else :meth:`ModelPickup.for_version
        <pbi_bluesky.scoring.pickup.ModelPickup.for_version>`.
        """
        return self if self.pickup is None else self.pickup.for_version(self, number)

    def with_model(self, model: AnomalyDetector) -> FrameScorer:
        """Return a copy scoring with ``model``.

        Parameters
        ----------
        model
            A loaded, checked detector.

        Returns
        -------
        FrameScorer
            A copy that reads the model's recipes and shares this scorer's reducers,
            buffers, running background and registry pick-up.
        """
        other = copy.copy(self)
        other.model = model
        other.model_info = dict(model.bundle_info)
        other.reader = copy.copy(self.reader)
        other.reader.recipes = tuple(model.recipes)
        return other

    def reducing(self) -> FrameScorer:
        """Return a reduce-only copy (as ``reduce_only=True``) sharing this scorer's reducers.

        The copy reads and reduces exactly as this scorer does and reuses the reduction
        operators it built already (a Pilatus 1M operator takes seconds to build), with
        buffers of its own. Use it while this scorer is idle (after :meth:`flush` of its
        owner): the reducers are shared.
        """
        other = copy.copy(self)
        other.pickup = None
        other.model = None
        other.model_info = {}
        other.reader = copy.copy(self.reader)
        other.reader.recipes = None
        other._buffers = FrameBuffers()
        return other

    # -- what the reader holds --------------------------------------------------------------
    @property
    def keys(self) -> dict[str, str | None]:
        """The configured data keys (``image_key``, ``monitor_key``, ``transmission_key``)."""
        return self.reader.keys

    @property
    def poni_text(self) -> str | None:
        """The configured geometry (PONI text), or None (each run's start document)."""
        return self.reader.poni_text

    @property
    def data_roots(self) -> tuple[str, ...]:
        """Folders frame files named by documents may be read from."""
        return self.reader.data_roots

    @property
    def transmission_required(self) -> bool:
        """Whether a stream without a transmission reading is refused (else T = 1)."""
        return self.reader.transmission_required

    @property
    def monitor_from_start(self) -> bool:
        """Whether I0/transmission may come from start-document keys."""
        return self.reader.monitor_from_start

    # -- streams and runs -----------------------------------------------------------------
    def roles(self, descriptor: dict[str, Any]) -> Roles | None:
        """Return the key roles of a descriptor (``None``: not an image stream)."""
        return self.reader.roles(descriptor)

    def begin_analysis(self, start: dict[str, Any], *, live: bool = True,
                       extra: dict[str, Any] | None = None) -> AnalysisRun:
        """Return the analysis run (start document and descriptors) of a raw run.

        ``live`` and ``extra``: see :meth:`AnalysisRun.begin`.
        """
        return AnalysisRun.begin(start, self.model, self.model_info,
                                 self.reduction_provenance(start), ANALYSIS_STREAM,
                                 ATTRIBUTION_STREAM, live=live, extra=extra)

    def reduction_provenance(self, start: dict[str, Any]) -> dict[str, Any]:
        """Reduction settings and geometry provenance recorded in the analysis start."""
        poni = self.poni_text or start.get("geometry")
        info: dict[str, Any] = {"geometry_source": "configured" if self.poni_text else
                                "start document" if poni else "missing",
                                "npt": self.npt, "polarization_factor": self.polarization_factor,
                                "mask": self.mask is not None, "dark": self.dark is not None,
                                "flat": self.flat is not None}
        if poni:
            try:
                info.update(self.reducer(poni).provenance())
            except Exception as exc:  # noqa: BLE001 - frames will fail with the reason
                info["geometry_error"] = str(exc)
        return info

    def reducer(self, poni: str) -> Reducer:
        """Return the reducer of one geometry.

        It is built once per PONI text, by one thread at a time (a bus worker's coordinator thread
        asks for it too, and two concurrent builds of the
        same operator crashed a worker natively).
        """
        key = hashlib.sha256(poni.encode()).hexdigest()
        with self._reducer_lock:
            reducer = self._reducers.get(key)
            if reducer is None:
                reducer = Reducer(load_geometry_text(poni), npt=self.npt, mask=self.mask,
                                  dark=self.dark, flat=self.flat,
                                  polarization_factor=self.polarization_factor,
                                  absolute_scale=self.absolute_scale)
                self._reducers[key] = reducer
        return reducer

    # -- one frame ------------------------------------------------------------------------
    base_result = staticmethod(base_result)

    def read(self, frame: FrameInput, cache: ReadCache | None = None) -> Reading:
        """Read and check one frame (:meth:`~pbi_bluesky.scoring.reader.FrameReader.read`)."""
        return self.reader.read(frame, cache)

    @staticmethod
    def _prefetch(frames: list[FrameInput], cache: ReadCache) -> None:
        # the batch's read-ahead (FrameReader.prefetch), a step of its own for the stage
        # timer of benchmarks/live_hdf5.py (read = _prefetch + read)
        FrameReader.prefetch(frames, cache)

    def resampled(self, profile: Profile | None) -> tuple[np.ndarray, np.ndarray] | None:
        """Return a profile on the model's grid.

        ``None`` if it does not cover the grid (or there is no model).
        """
        if profile is None or self.model is None:
            return None
        try:
            inten, sig = self.model.resample([profile])
        except Exception:  # noqa: BLE001 - the curve does not cover the grid
            return None
        return inten[0], sig[0]

    def _failed(self, frame: FrameInput, exc: Exception, profile: Profile | None) -> Outcome:
        reason = f"{type(exc).__name__}: {exc}"
        logger.info("frame %d of run %s failed: %s", frame.parts.seq_num, frame.raw_uid[:8],
                    reason)
        return Outcome(frame, self.base_result(frame, "failed", reason), profile,
                       self.resampled(profile))

    # -- a batch ----------------------------------------------------------------------------
    def process(self, frames: list[FrameInput]) -> list[Outcome]:
        """Read, reduce and score a batch of frames.

        Each file is opened once, neighbouring frames in one slice; the sample frames are
        reduced together with the batch integrator, then scored in one model pass.

        Frames are handled in order: an empty-cell frame replaces the running background
        (:attr:`background`) for the later frames that inherit it. Every frame gets one
        outcome, in the order given; nothing raises. A frame's numbers do not depend on the
        batch it came in (the batch reducer equals the single-frame one bit for bit).
        """
        outcomes: list[Outcome | None] = [None] * len(frames)
        to_score: list[tuple[int, FrameResult, Profile, np.ndarray, np.ndarray]] = []
        group: list[tuple[int, Reading]] = []
        group_reducer: Reducer | None = None
        group_bg: Profile | None = None
        with ReadCache(self._buffers) as cache:
            self._prefetch(frames, cache)
            for i, frame in enumerate(frames):
                try:
                    reading = self.read(frame, cache)
                    reducer = self.reducer(reading.geometry)
                except Exception as exc:  # noqa: BLE001 - every failure becomes a record
                    outcomes[i] = self._failed(frame, exc, None)
                    continue
                background = (self.background if frame.background is INHERIT
                              else frame.background)
                if group and (reading.is_cell or reducer is not group_reducer
                              or background is not group_bg):
                    self._reduce_group(frames, group, group_reducer, group_bg, outcomes,
                                       to_score)
                    group = []
                if reading.is_cell:
                    self._reference(i, frame, reading, reducer, outcomes)
                    continue
                group.append((i, reading))
                group_reducer, group_bg = reducer, background
            if group and group_reducer is not None:
                self._reduce_group(frames, group, group_reducer, group_bg, outcomes, to_score)
        if to_score:
            for i, outcome in self._score(frames, to_score):
                outcomes[i] = outcome
        return [o for o in outcomes if o is not None]

    def _reference(self, i: int, frame: FrameInput, reading: Reading, reducer: Reducer,
                   outcomes: list[Outcome | None]) -> None:
        try:
            profile = reducer.reduce_absolute(
                reading.image, i0=reading.i0, transmission=reading.transmission)
        except Exception as exc:  # noqa: BLE001
            outcomes[i] = self._failed(frame, exc, None)
            return
        if frame.background is INHERIT:
            self.background = profile
        result = reading.result
        result.status, result.reason = "reference", "empty cell: background updated"
        outcomes[i] = Outcome(frame, result, profile, self.resampled(profile))

    def _reduce_group(self, frames: list[FrameInput], group: list[tuple[int, Reading]],
                      reducer: Reducer, background: Profile | None,
                      outcomes: list[Outcome | None], to_score: list) -> None:
        """Reduce frames of one geometry and background in one batch call.

        Frame by frame if the batch call fails, so the reason lands on the right frame.
        """
        if background is None and not self._warned_no_background:
            self._warned_no_background = True
            logger.warning("no empty-cell background yet (measure a run with "
                           "sample_type='empty_cell' or pass background=): profiles "
                           "include the cell's scattering")
        profiles: list[Profile] | None = None
        if len(group) > 1:
            try:
                profiles = reducer.reduce_absolute_many(
                    stack_rows([r.image for _, r in group]), i0=[r.i0 for _, r in group],
                    transmission=[r.transmission for _, r in group],
                    thickness_cm=[r.thickness for _, r in group], background=background)
            except Exception:  # noqa: BLE001 - retried frame by frame below
                logger.debug("batch reduction failed; reducing frame by frame", exc_info=True)
        for k, (i, r) in enumerate(group):
            profile = None
            try:
                profile = profiles[k] if profiles is not None else reducer.reduce_absolute(
                    r.image, i0=r.i0, transmission=r.transmission, thickness_cm=r.thickness,
                    background=background)
                if self.model is None:  # reduce_only: the profile is the outcome
                    r.result.status = "reduced"
                    outcomes[i] = Outcome(frames[i], r.result, profile)
                    continue
                intensity, sigma = self.model.resample([profile])
            except Exception as exc:  # noqa: BLE001 - every failure becomes a record
                outcomes[i] = self._failed(frames[i], exc, profile)
                continue
            to_score.append((i, r.result, profile, intensity[0], sigma[0]))

    def _score(self, frames: list[FrameInput], rows: list) -> list[tuple[int, Outcome]]:
        intensity = np.stack([r[3] for r in rows])
        sigma = np.stack([r[4] for r in rows])
        expected = [frames[r[0]].start.get("composition") for r in rows]
        n = len(rows)
        pad = max(0, self.min_batch_rows - n)
        if pad:  # a fixed minimum batch: scores independent of the batch (module docstring)
            intensity = np.concatenate([intensity, np.repeat(intensity[:1], pad, 0)])
            sigma = np.concatenate([sigma, np.repeat(sigma[:1], pad, 0)])
            expected = expected + expected[:1] * pad
        try:
            verdicts = self.model.score_arrays(intensity, sigma, expected, explain="none")[:n]
        except Exception as exc:  # noqa: BLE001 - fail the batch, frame by frame
            return [(i, self._failed(frames[i], exc, profile))
                    for i, _res, profile, _in, _sg in rows]
        out = []
        for (i, base, profile, inten, sig), verdict in zip(rows, verdicts, strict=True):
            frame = frames[i]
            result = FrameResult(
                frame.raw_uid, frame.parts.seq_num, "scored", score=verdict.score,
                threshold=verdict.threshold, is_anomaly=verdict.is_anomaly,
                p_value=verdict.p_value, hyperscore=verdict.hyperscore,
                predicted_composition=verdict.predicted_composition,
                expected_composition=verdict.expected_composition, metadata=base.metadata)
            if verdict.is_anomaly:
                logger.warning(
                    "ANOMALY run %s frame %d sample %s: score %.3g p %.3g (expected %s, looks "
                    "like %s)", frame.raw_uid[:8], frame.parts.seq_num,
                    frame.start.get("sample"), verdict.score, verdict.p_value,
                    verdict.expected_composition, verdict.predicted_composition)
            out.append((i, Outcome(frame, result, profile, (inten, sig))))
        return out
