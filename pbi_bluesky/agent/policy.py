"""The agent's policy: data (a YAML file or a mapping), never code.

Example (``profiles/profile_saxs/agent_policy.yaml``)::

    max_rescans: 1            # rescans the agent may queue for one sample, all its flags together
    reference_slots: [0]      # never rescanned (e.g. the empty cell)
    reference_sample_types: [empty_cell, reference, standard, calibrant]
    position: front           # front: the rescan runs next; back: at the end of the queue
    cooldown_s: 0             # at least this long between two rescans of the same sample
    exposure_factor: 2.0      # rescan exposure = the flagged measurement's exposure * this
    min_max_score: null       # rescan only flags whose highest frame score is at least this

A flagged measurement is ``confirmed`` as soon as one of its rescans is flagged too and
``transient`` when its rescans (at most ``max_rescans`` for the sample) are all clean; rescans
never trigger rescans of their own. Unknown keys and bad values are a :class:`PolicyError`
that names the file and the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_POLICY_FILE", "AgentPolicy", "PolicyError", "load_policy"]

DEFAULT_POLICY_FILE = (Path(__file__).resolve().parents[2] / "profiles" / "profile_saxs"
                       / "agent_policy.yaml")

POSITIONS = {"front": "front", "next": "front", "back": "back", "end": "back"}


class PolicyError(ValueError):
    """The policy is malformed; the message says where and which key."""


@dataclass(frozen=True)
class AgentPolicy:
    """What the agent may do (see the module docstring for each key)."""

    max_rescans: int = 1
    reference_slots: tuple[int, ...] = (0,)
    reference_sample_types: tuple[str, ...] = ("empty_cell", "reference", "standard",
                                               "calibrant")
    position: str = "front"
    cooldown_s: float = 0.0
    exposure_factor: float = 2.0
    min_max_score: float | None = None
    user: str = "pbi agent"
    user_group: str = "agent"
    source: str = field(default="<defaults>", compare=False)

    def __post_init__(self) -> None:
        where = self.source

        def bad(key: str, why: str) -> PolicyError:
            return PolicyError(f"{where}: {key}: {why}")

        if isinstance(self.max_rescans, bool) or not isinstance(self.max_rescans, int) \
                or self.max_rescans < 0:
            raise bad("max_rescans", f"must be an integer >= 0, got {self.max_rescans!r}")
        if self.position not in POSITIONS:
            raise bad("position", f"must be one of {sorted(POSITIONS)}, got {self.position!r}")
        object.__setattr__(self, "position", POSITIONS[self.position])
        for key in ("cooldown_s", "exposure_factor"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise bad(key, f"must be a number >= 0, got {value!r}")
        if not self.exposure_factor > 0:
            raise bad("exposure_factor", "must be > 0")
        if self.min_max_score is not None and (isinstance(self.min_max_score, bool) or
                                               not isinstance(self.min_max_score, (int, float))):
            raise bad("min_max_score", f"must be a number or null, got {self.min_max_score!r}")
        try:
            slots = tuple(_int(s) for s in self.reference_slots)
        except (TypeError, ValueError) as exc:
            raise bad("reference_slots", f"must be a list of slot numbers: {exc}") from None
        object.__setattr__(self, "reference_slots", slots)
        if isinstance(self.reference_sample_types, str) or not all(
                isinstance(t, str) for t in self.reference_sample_types):
            raise bad("reference_sample_types", "must be a list of strings")
        object.__setattr__(self, "reference_sample_types", tuple(self.reference_sample_types))
        for key in ("user", "user_group"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise bad(key, "must be a non-empty string")

    def is_reference(self, slot: Any, sample_type: Any, purpose: Any = None) -> bool:
        """True for what is never rescanned: a reference slot, a reference sample type, or a
        measurement made as a reference."""
        try:
            in_slots = slot is not None and _int(slot) in self.reference_slots
        except (TypeError, ValueError):
            in_slots = False
        return in_slots or sample_type in self.reference_sample_types or purpose == "reference"

    def as_dict(self) -> dict[str, Any]:
        """Plain data (recorded with every decision)."""
        out = dataclasses.asdict(self)
        out["reference_slots"] = list(self.reference_slots)
        out["reference_sample_types"] = list(self.reference_sample_types)
        return out


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{value!r} is not a slot number")
    return int(value)


def load_policy(source: str | Path | Mapping[str, Any] | None = None) -> AgentPolicy:
    """A policy from a YAML file, a mapping, or (``None``) the shipped default file.

    Raises
    ------
    PolicyError
        Unreadable file, not a mapping, unknown key or bad value.
    """
    import yaml

    if source is None:
        source = DEFAULT_POLICY_FILE
    if isinstance(source, Mapping):
        data, where = dict(source), "<policy mapping>"
    else:
        path = Path(source)
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise PolicyError(f"cannot read the agent policy {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise PolicyError(f"{where}: expected a mapping of policy keys, got "
                          f"{type(data).__name__}")
    known = {f.name for f in dataclasses.fields(AgentPolicy) if f.name != "source"}
    unknown = set(data) - known
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    values = dict(data)
    for key in ("reference_slots", "reference_sample_types"):
        if key in values:
            if values[key] is None:
                values[key] = ()
            elif isinstance(values[key], (list, tuple)):
                values[key] = tuple(values[key])
            else:
                raise PolicyError(f"{where}: {key}: must be a list, got {values[key]!r}")
    return AgentPolicy(**values, source=where)
