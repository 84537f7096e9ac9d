"""Settings read from files, checked by pydantic: a typo is an error, never a default.

:class:`StrictModel` is the base of every settings section (``beamline.yaml``, the agent
policy): unknown keys are refused (``extra="forbid"``), values are frozen, numbers and
booleans are not coerced from strings or from each other (``"0.5"`` or ``true`` for a
number is an error), and numbers are finite (no ``.nan`` or ``.inf``). :func:`explain`
turns a :class:`pydantic.ValidationError` into one line per fault that names the file and
the dotted key, in the words the files use.
"""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
)
from pydantic import ValidationError as ValidationError

__all__ = ["Bool", "ConfigError", "Count", "EnvName", "Float", "Int", "KeyFault",
           "NonNegative", "Port", "Positive", "StrictModel", "ValidationError", "expand_path",
           "explain"]

Int = StrictInt
"""An integer (not a bool, not a float, not a string)."""
Float = Annotated[StrictFloat, Field(allow_inf_nan=False)]
"""A finite number (an integer is accepted; a bool, a string, NaN or infinity is not)."""
Bool = StrictBool
"""``true`` or ``false`` (not 0/1, not ``"yes"``)."""
Positive = Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False)]
"""A finite number > 0."""
Count = Annotated[StrictInt, Field(ge=1)]
"""An integer >= 1."""

NonNegative = Annotated[Float, Field(ge=0)]
"""A finite number >= 0."""
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
"""The name of an environment variable (where a secret is read from)."""
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
"""A TCP/UDP port number."""


class ConfigError(ValueError):
    """The beamline configuration is missing, malformed or inconsistent.

    The message says which file and which key.
    """



def expand_path(value: Any, info: ValidationInfo) -> Any:
    """Expand a path from the file: ``~`` and ``$VARS``, relative to the file's folder.

    Only when read from a file (``info.context["base"]``); objects built in code keep their
    paths as given.
    """
    base = (info.context or {}).get("base") if info.context else None
    if value is None or base is None:
        return value
    text = os.path.expandvars(os.path.expanduser(str(value)))
    path = Path(text)
    return str(path if path.is_absolute() else (Path(base) / path).resolve())


class KeyFault(ValueError):
    """Raised by a section's validator about one of its keys (``key``).

    :func:`explain` names it as ``section.key``.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class StrictModel(BaseModel):
    """A frozen settings section that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """Return the model class inside an annotation (``X``, ``X | None``, ``Annotated[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType, Annotated):
        for arg in get_args(annotation):
            found = _submodel(arg)
            if found is not None:
                return found
    return None


def _model_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = _submodel(field.annotation)
    return model


def explain(exc: ValidationError, model: type[BaseModel], where: str, *,
            hide_values: tuple[str, ...] = ()) -> str:
    """One line per fault of ``exc``: ``where: dotted.key: what is wrong``.

    Parameters
    ----------
    exc
        The error pydantic raised validating ``model``.
    model
        The top-level model (to list the known keys next to an unknown one).
    where
        The file (or ``<mapping>``) the data came from.
    hide_values
        Top-level sections whose offending values are never repeated in the message (they
        may hold what looks like a secret, e.g. a URL with a password).
    """
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        fault = (err.get("ctx") or {}).get("error")
        if isinstance(fault, KeyFault):
            loc = (*loc, fault.key)
        key = ".".join(str(p) for p in loc) or "(top level)"
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            known = sorted(parent.model_fields) if parent is not None else []
            known = [k for k in known if k != "source"]
            lines.append(f"{where}: {key}: unknown key; known: {known}")
            continue
        if kind == "missing":
            lines.append(f"{where}: {key}: missing required key")
            continue
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        value = err.get("input")
        hidden = (loc and str(loc[0]) in hide_values) or "input" not in err \
            or isinstance(value, (dict, list, tuple))  # a section: may hold anything
        shown = "" if hidden else f", got {_short(value)}"
        lines.append(f"{where}: {key}: {msg}{shown}")
    return "; ".join(lines)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
