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
never trigger rescans of their own. The policy is a pydantic model with ``extra="forbid"``:
unknown keys and bad values are a :class:`PolicyError` that names the file and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StrictStr, field_validator

from pbi_bluesky.config.strict import Float, Int, StrictModel, ValidationError, explain
from pbi_bluesky.infra.resources import profile_dir

__all__ = ["DEFAULT_POLICY_FILE", "AgentPolicy", "PolicyError", "load_policy"]

DEFAULT_POLICY_FILE = profile_dir() / "agent_policy.yaml"

POSITIONS = {"front": "front", "next": "front", "back": "back", "end": "back"}


class PolicyError(ValueError):
    """The policy is malformed; the message says where and which key."""


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{value!r} is not a slot number")
    return int(value)


def _slot(value: Any) -> int:
    try:
        return _int(value)
    except ValueError:
        raise ValueError("must be a slot number (an integer)") from None


def _listed(value: Any) -> Any:
    """Return a YAML list as a tuple (``null``: an empty one); a bare string is no list."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValueError("must be a list")
    return tuple(value)


Slot = Annotated[int, BeforeValidator(_slot)]
Name = Annotated[StrictStr, Field(min_length=1)]


class AgentPolicy(StrictModel):
    """What the agent may do (see the module docstring for each key).

    Built from keywords, a bad value raises :class:`PolicyError` naming the key.
    ``source`` (where the policy came from) is recorded but not compared.
    """

    max_rescans: Annotated[Int, Field(ge=0)] = 1
    reference_slots: Annotated[tuple[Slot, ...], BeforeValidator(_listed)] = (0,)
    reference_sample_types: Annotated[tuple[StrictStr, ...], BeforeValidator(_listed)] = (
        "empty_cell", "reference", "standard", "calibrant")
    position: Literal["front", "back"] = "front"
    cooldown_s: Annotated[Float, Field(ge=0)] = 0.0
    exposure_factor: Annotated[Float, Field(gt=0)] = 2.0
    min_max_score: Float | None = None
    user: Name = "pbi agent"
    user_group: Name = "agent"
    source: str = "<defaults>"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            where = str(data.get("source", "<policy>"))
            raise PolicyError(explain(exc, AgentPolicy, where)) from None

    @field_validator("position", mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        if not isinstance(value, str) or value not in POSITIONS:
            raise ValueError(f"must be one of {sorted(POSITIONS)}")
        return POSITIONS[value]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AgentPolicy):
            return NotImplemented
        return self.as_dict(source=False) == other.as_dict(source=False)

    def __hash__(self) -> int:
        return hash(repr(sorted(self.as_dict(source=False).items())))

    def is_reference(self, slot: Any, sample_type: Any, purpose: Any = None) -> bool:
        """Return True for what is never rescanned.

        That is a reference slot, a reference sample type, or a measurement made as a
        reference.
        """
        try:
            in_slots = slot is not None and _int(slot) in self.reference_slots
        except (TypeError, ValueError):
            in_slots = False
        return in_slots or sample_type in self.reference_sample_types or purpose == "reference"

    def as_dict(self, *, source: bool = True) -> dict[str, Any]:
        """Return the policy as plain data (recorded with every decision).

        ``source=False`` leaves out where the policy came from.
        """
        return self.model_dump(mode="json", exclude=None if source else {"source"})


def load_policy(source: str | Path | Mapping[str, Any] | None = None) -> AgentPolicy:
    """Load a policy from a YAML file, a mapping, or (``None``) the shipped default file.

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
    if "source" in data:  # where the policy came from is not the file's to say
        known = sorted(k for k in AgentPolicy.model_fields if k != "source")
        raise PolicyError(f"{where}: source: unknown key; known: {known}")
    return AgentPolicy(**{str(k): v for k, v in data.items()}, source=where)
