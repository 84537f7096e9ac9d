"""Sample trays for the simulated SAXS beamline.

A tray file (YAML or JSON) is a list of slots, or a mapping with a ``slots`` list. Each slot::

    - slot: 3                  # integer changer position (>= 1), unique
      sample: PSPMMA-50-b      # sample name shown to users
      composition: "50:50"     # nominal recipe, wt% A : wt% B
      kind: contamination      # hidden truth: "normal" or an anomaly kind
      severity: 0.8            # hidden truth, 0..1 (ignored for normal)
      thickness_cm: 0.1        # optional, default 0.1
      faults: {beam_dump: 0.8} # optional instrument faults for this slot's exposures
      transient: true          # optional: the faults hit only the slot's FIRST exposure

The tray is data, not PVs (no real beamline has a PV that knows a sample's recipe): a
plan gets what it may know from :func:`public_tray`. The ``kind``/``severity``/``faults``
are the hidden ground truth the anomaly detector has to find; only the IOC reads them.
Position 0 of the changer holds the empty cell (windows only, the background reference).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pbi_bluesky.simulate import INSTRUMENT_FAULTS, SAMPLE_ANOMALIES
from pbi_bluesky.simulate.anomalies import applicable_anomalies
from pbi_bluesky.simulate.recipes import parse_recipe

__all__ = ["EMPTY_CELL", "TrayError", "TraySlot", "default_tray", "dump_tray", "load_tray",
           "parse_tray", "public_tray"]

MAX_NAME_LENGTH = 39
"""Sample names fit an EPICS DBR_STRING (40 bytes incl. terminator), e.g. a sample-name PV."""

EMPTY_CELL: dict[str, Any] = {"slot": 0, "sample": "empty cell", "sample_type": "empty_cell"}
"""What a plan knows of changer position 0."""

_KNOWN_KEYS = {
    "slot", "sample", "composition", "kind", "severity", "thickness_cm", "faults", "transient",
}


class TrayError(ValueError):
    """A tray file or tray entry is invalid."""


@dataclass(frozen=True)
class TraySlot:
    """One specimen position of the sample changer.

    Parameters
    ----------
    slot
        Changer position (integer >= 1).
    sample
        Sample name.
    composition
        Nominal recipe, e.g. ``"25:75"``.
    kind
        Hidden truth: ``"normal"`` or one of ``SAMPLE_ANOMALIES``.
    severity
        Hidden anomaly severity in [0, 1].
    thickness_cm
        Specimen thickness.
    faults
        Instrument faults (``INSTRUMENT_FAULTS`` -> severity) applied to this slot's frames.
    transient
        If true, ``faults`` apply to the first exposure of the slot only.
    """

    slot: int
    sample: str
    composition: str
    kind: str = "normal"
    severity: float = 0.0
    thickness_cm: float = 0.1
    faults: dict[str, float] = field(default_factory=dict)
    transient: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, as written to a tray file."""
        return asdict(self)


def _slot_from_dict(entry: Any, where: str) -> TraySlot:
    if not isinstance(entry, dict):
        raise TrayError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = set(entry) - _KNOWN_KEYS
    if unknown:
        raise TrayError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(_KNOWN_KEYS)}")
    if "slot" not in entry:
        raise TrayError(f"{where}: missing required key 'slot'")
    slot = entry["slot"]
    if isinstance(slot, bool) or not isinstance(slot, int) or slot < 1:
        raise TrayError(f"{where}: 'slot' must be an integer >= 1, got {slot!r}")
    where = f"{where} (slot {slot})"
    for key in ("sample", "composition"):
        if key not in entry:
            raise TrayError(f"{where}: missing required key {key!r}")
    sample = str(entry["sample"])
    if not sample or len(sample) > MAX_NAME_LENGTH:
        raise TrayError(f"{where}: sample name must have 1..{MAX_NAME_LENGTH} characters, "
                        f"got {sample!r}")
    composition = str(entry["composition"])
    try:
        parse_recipe(composition)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise TrayError(f"{where}: bad composition {composition!r}: {exc}") from exc
    kind = str(entry.get("kind", "normal"))
    if kind != "normal":
        if kind not in SAMPLE_ANOMALIES:
            raise TrayError(f"{where}: unknown kind {kind!r}; expected 'normal' or one of "
                            f"{', '.join(SAMPLE_ANOMALIES)}")
        if kind not in applicable_anomalies(composition):
            raise TrayError(f"{where}: anomaly {kind!r} does not apply to recipe {composition!r}")
    try:
        severity = float(entry.get("severity", 0.0))
        thickness = float(entry.get("thickness_cm", 0.1))
    except (TypeError, ValueError) as exc:
        raise TrayError(f"{where}: severity/thickness_cm must be numbers: {exc}") from exc
    if not 0.0 <= severity <= 1.0:
        raise TrayError(f"{where}: severity must be in [0, 1], got {severity}")
    if not 0.0 < thickness < 10.0:
        raise TrayError(f"{where}: thickness_cm must be in (0, 10), got {thickness}")
    faults_in = entry.get("faults") or {}
    if not isinstance(faults_in, dict):
        raise TrayError(f"{where}: 'faults' must be a mapping fault -> severity")
    faults: dict[str, float] = {}
    for name, value in faults_in.items():
        if name not in INSTRUMENT_FAULTS:
            raise TrayError(f"{where}: unknown fault {name!r}; known: "
                            f"{', '.join(INSTRUMENT_FAULTS)}")
        try:
            sev = float(value)
        except (TypeError, ValueError) as exc:
            raise TrayError(f"{where}: fault {name} severity must be a number") from exc
        if not 0.0 <= sev <= 1.0:
            raise TrayError(f"{where}: fault {name} severity must be in [0, 1], got {sev}")
        faults[str(name)] = sev
    transient = entry.get("transient", False)
    if not isinstance(transient, bool):
        raise TrayError(f"{where}: 'transient' must be true or false, got {transient!r}")
    return TraySlot(slot, sample, composition, kind, severity, thickness, faults, transient)


def parse_tray(data: Any, source: str = "<tray>") -> list[TraySlot]:
    """Validate plain data (list of slot mappings, or ``{"slots": [...]}``) into slots.

    Raises
    ------
    TrayError
        With the source name, entry index and slot number of the first problem.
    """
    if isinstance(data, dict) and "slots" in data:
        data = data["slots"]
    if not isinstance(data, list) or not data:
        raise TrayError(f"{source}: a tray must be a non-empty list of slots "
                        "(or a mapping with a 'slots' list)")
    slots = [_slot_from_dict(e, f"{source}: entry {i}") for i, e in enumerate(data)]
    seen: set[int] = set()
    for s in slots:
        if s.slot in seen:
            raise TrayError(f"{source}: slot {s.slot} is defined more than once")
        seen.add(s.slot)
    return sorted(slots, key=lambda s: s.slot)


def public_tray(slots: Iterable[TraySlot]) -> list[dict[str, Any]]:
    """Return what a plan may know of a tray: slot, sample, composition, thickness, type.

    The first entry is the empty cell at position 0; the hidden truth (kind, severity,
    faults) is left out.
    """
    rows: list[dict[str, Any]] = [dict(EMPTY_CELL)]
    for s in sorted(slots, key=lambda s: s.slot):
        rows.append({"slot": s.slot, "sample": s.sample, "composition": s.composition,
                     "thickness_cm": s.thickness_cm, "sample_type": "sample"})
    return rows


def load_tray(path: str | Path) -> list[TraySlot]:
    """Load and validate a tray file (``.yaml``/``.yml`` or ``.json``)."""
    path = Path(path)
    if not path.is_file():
        raise TrayError(f"tray file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - parser errors vary
        raise TrayError(f"{path}: cannot parse tray file: {exc}") from exc
    return parse_tray(data, str(path))


def dump_tray(slots: Iterable[TraySlot], path: str | Path) -> Path:
    """Write slots to a YAML (or ``.json``) tray file and return the path."""
    path = Path(path)
    data = {"slots": [s.to_dict() for s in slots]}
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(data, indent=2))
    else:
        import yaml

        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def default_tray() -> list[TraySlot]:
    """Return the tray of ``make demo``: fourteen slots.

    Normals of every recipe, each anomaly kind, and one normal specimen hit by a one-shot
    beam dump.
    """
    rows: list[dict[str, Any]] = [
    {"slot": 1, "sample": "PSPMMA-25-a", "composition": "25:75"},
    {"slot": 2, "sample": "PSPMMA-50-a", "composition": "50:50"},
    {"slot": 3, "sample": "PSPMMA-50-b", "composition": "50:50", "kind": "contamination",
     "severity": 0.8},
    {"slot": 4, "sample": "PSPMMA-75-a", "composition": "75:25"},
    {"slot": 5, "sample": "PSPMMA-25-b", "composition": "25:75", "kind": "coarsening",
     "severity": 0.7},
    {"slot": 6, "sample": "PSPMMA-50-c", "composition": "50:50", "kind": "degradation",
     "severity": 0.8},
    {"slot": 7, "sample": "PMMA-ref", "composition": "0:100"},
    {"slot": 8, "sample": "PS-ref", "composition": "100:0"},
    {"slot": 9, "sample": "PSPMMA-75-b", "composition": "75:25", "kind": "composition_drift",
     "severity": 0.9},
    {"slot": 10, "sample": "PSPMMA-50-d", "composition": "50:50",
     "faults": {"beam_dump": 0.8}, "transient": True},
    {"slot": 11, "sample": "PSPMMA-25-c", "composition": "25:75", "kind": "thickness_error",
     "severity": 0.8},
    {"slot": 12, "sample": "PSPMMA-75-c", "composition": "75:25", "kind": "mislabelled",
     "severity": 0.9},
    {"slot": 13, "sample": "PSPMMA-50-e", "composition": "50:50"},
    {"slot": 14, "sample": "PMMA-b", "composition": "0:100", "kind": "contamination",
     "severity": 0.6},
]
    return parse_tray(rows, "default_tray")
