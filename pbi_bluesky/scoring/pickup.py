"""Which model scores a run: the registry's current version, picked up at run boundaries.

A :class:`~pbi_bluesky.scoring.engine.FrameScorer` given a model registry
(:class:`~pbi_bluesky.models.registry.ModelRegistry`, ``scorer.registry`` in
``beamline.yaml``) holds a :class:`ModelPickup`. The pickup decides, at a run's start only,
which model that run is scored with: the registry's current version, or the scorer's own
model (the fallback) when nothing is promoted or after a rollback to nothing. A run keeps
the model it started with, even when a newer one is promoted mid-run.

* In one process (:class:`~pbi_bluesky.live.LiveScorer`) the callback asks
  :meth:`ModelPickup.at_run_start` at each run start.
* Scorers spread over processes (the bus workers) agree through a pin: the dispatcher
  records :meth:`ModelPickup.pin` with the run's start and every worker asks
  :meth:`ModelPickup.for_version` for that version, so all frames of a run are scored by
  one model however many workers share it.

A registry that cannot be read, or a version that does not load, keeps the model in use
(logged): scoring never stops because of the registry.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pbi_bluesky.models import AnomalyDetector, ensure_can_flag, load_bundle
from pbi_bluesky.models.bundle import load_default_model
from pbi_bluesky.models.registry import ModelRegistry

if TYPE_CHECKING:
    from pbi_bluesky.scoring.engine import FrameScorer

__all__ = ["ModelPickup", "load_model"]

logger = logging.getLogger(__name__)


def load_model(model: AnomalyDetector | str | Path | None) -> AnomalyDetector:
    """Return the model a scorer was given, checked.

    Parameters
    ----------
    model
        A fitted detector, the folder of a bundle, or ``None`` (the shipped default model).

    Returns
    -------
    AnomalyDetector
        The model, ready to score.

    Raises
    ------
    pbi_bluesky.models.BundleError
        The bundle does not load, or the model can never flag (no finite threshold).
    """
    if isinstance(model, AnomalyDetector):
        return ensure_can_flag(model)
    return load_bundle(model) if model is not None else load_default_model()


class ModelPickup:
    """The registry a scorer follows from run to run (see the module docstring).

    Parameters
    ----------
    root
        The registry folder.
    fallback
        The scorer's own model (a detector, a bundle folder or ``None``: the shipped
        model): what scores while nothing is promoted.
    """

    def __init__(self, root: str | Path,
                 fallback: AnomalyDetector | str | Path | None) -> None:
        self.registry = ModelRegistry(root)
        self.fallback = fallback
        self._scorers: dict[int | None, FrameScorer] = {}

    @property
    def root(self) -> Path:
        """The registry folder."""
        return self.registry.root

    def first_model(self) -> AnomalyDetector | str | Path | None:
        """Return the model a new scorer starts with.

        That is the current version, loaded and checked, or the fallback (as given) when
        nothing is promoted. Unlike at run boundaries, a registry that cannot be read or a
        current version that does not load raises here: a scorer does not start on a
        model its registry does not name.
        """
        promoted = self.registry.current()
        return self.registry.load(promoted) if promoted is not None else self.fallback

    def pin(self) -> str | None:
        """Return the registry version a run starting now is scored with, as text.

        ``"0"`` means the fallback model (nothing promoted); ``None``, a registry that
        cannot be read (logged): the workers then keep their own model.
        """
        try:
            current = self.registry.current()
        except Exception as exc:  # noqa: BLE001 - the workers keep their own model
            logger.error("model registry %s: %s", self.root, exc)
            return None
        return "0" if current is None else str(current.number)

    def at_run_start(self, scorer: FrameScorer) -> FrameScorer:
        """Return the scorer for a run that starts now.

        Parameters
        ----------
        scorer
            The scorer in use (it holds this pickup).

        Returns
        -------
        FrameScorer
            ``scorer``, or, when the registry's current version is not its model, the
            scorer of that version (:meth:`for_version`). A registry that cannot be read
            keeps ``scorer`` (logged).
        """
        try:
            current = self.registry.current()
        except Exception as exc:  # noqa: BLE001 - scoring goes on with the model in use
            logger.error("model registry %s: keeping model %s: %s", self.root,
                         _sha(scorer), exc)
            return scorer
        other = self.for_version(scorer, None if current is None else current.number)
        if other is not scorer:
            logger.warning("model registry %s: runs from now on are scored by version %s "
                           "(sha256 %s)", self.root,
                           other.model_info.get("registry_version"), _sha(other))
        return other

    def for_version(self, scorer: FrameScorer, number: int | str | None) -> FrameScorer:
        """Return the scorer of registry version ``number``.

        Parameters
        ----------
        scorer
            The scorer in use (it holds this pickup).
        number
            A registry version; ``None``, ``""``, ``0`` or ``"0"``: the fallback model.

        Returns
        -------
        FrameScorer
            ``scorer`` when that is the model in use; else a copy holding that model
            (:meth:`~pbi_bluesky.scoring.engine.FrameScorer.with_model`), cached per
            version, that shares ``scorer``'s reducers, buffers and running background. A
            model that fails to load keeps ``scorer`` (logged).
        """
        number = int(number) if number not in (None, "") and int(number) > 0 else None
        if number == scorer.model_info.get("registry_version"):
            return scorer
        other = self._scorers.get(number)
        if other is not None:
            other.background = scorer.background  # the running background goes on
            return other
        try:
            model = (self.registry.load(self.registry.version(number)) if number is not None
                     else load_model(self.fallback))
        except Exception as exc:  # noqa: BLE001 - scoring goes on with the model in use
            logger.error("model registry %s: version %s does not load, keeping model %s: %s",
                         self.root, number, _sha(scorer), exc)
            return scorer
        other = self._scorers[number] = scorer.with_model(model)
        return other

    def __repr__(self) -> str:
        return f"ModelPickup({str(self.root)!r})"


def _sha(scorer: Any) -> str:
    """Return the first characters of a scorer's model hash, for the log."""
    return str(scorer.model_info.get("model_sha256", "?"))[:12]
