"""NDAttributes: the per-frame values an areaDetector IOC stamps on every array.

An attribute set comes from an NDAttributes XML (ADCore's format, which ophyd-async's
``ndattributes_to_xml`` writes into ``cam1:NDAttributesFile``)::

    <Attributes>
      <Attribute name="I0" type="EPICS_PV" source="P:mon:I0" dbrtype="DBR_DOUBLE"
                 description="incident photons"/>
      <Attribute name="AcqTime" type="PARAM" source="ACQ_TIME" datatype="DOUBLE"/>
    </Attributes>

``EPICS_PV`` sources are resolved inside this IOC (its own PVs, fields included); a source it
does not serve cannot be read here and is reported when the set is loaded. ``PARAM``
sources are the driver parameters in :data:`PARAMS`. ``FUNCTION`` attributes are not
supported. Every problem is logged and returned, never silently dropped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

import numpy as np

__all__ = ["DBR_DTYPES", "PARAMS", "PARAM_DTYPES", "AttributeSpec", "NDAttributeError",
           "attributes_xml", "evaluate", "parse_attributes"]

log = logging.getLogger(__name__)

DBR_DTYPES = {
    "DBR_SHORT": "<i2", "DBR_ENUM": "<i2", "DBR_INT": "<i4", "DBR_LONG": "<i4",
    "DBR_FLOAT": "<f4", "DBR_DOUBLE": "<f8", "DBR_STRING": "S40", "DBR_CHAR": "|i1",
}
"""numpy dtype of an ``EPICS_PV`` attribute by its ``dbrtype`` (as ophyd-async expects)."""
PARAM_DTYPES = {"INT": "<i4", "INT64": "<i8", "DOUBLE": "<f8", "STRING": "S40"}
"""numpy dtype of a ``PARAM`` attribute by its ``datatype``."""
PARAMS = {
    "ACQ_TIME": "cam1:AcquireTime_RBV", "ACQ_PERIOD": "cam1:AcquirePeriod_RBV",
    "NIMAGES": "cam1:NumImages_RBV", "NEXPOSURES": "cam1:NumExposures_RBV",
    "ARRAY_COUNTER": "cam1:ArrayCounter_RBV", "MANUFACTURER": "cam1:Manufacturer_RBV",
    "MODEL": "cam1:Model_RBV", "THRESHOLD": "cam1:ThresholdEnergy_RBV",
    "ENERGY": "cam1:Energy_RBV",
}
"""Driver parameters a ``PARAM`` attribute may name, and the PV (below the prefix) it reads."""


class NDAttributeError(ValueError):
    """An NDAttributes XML that cannot be used."""


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute: recorded as ``/entry/instrument/NDAttributes/<name>`` per frame."""

    name: str
    source_type: str
    """``EPICS_PV`` or ``PARAM``."""
    source: str
    """The full PV name (``EPICS_PV``) or the parameter name (``PARAM``)."""
    dtype: str
    description: str = ""

    @property
    def fill(self) -> Any:
        """The value recorded when the source cannot be read: NaN, 0 or an empty string."""
        kind = np.dtype(self.dtype).kind
        return math.nan if kind == "f" else (b"" if kind == "S" else 0)


def parse_attributes(xml_text: str, prefix: str,
                     lookup: Callable[[str], Any]) -> tuple[list[AttributeSpec], list[str]]:
    """Parse an NDAttributes XML into specs and a list of problems (one line each).

    ``lookup(pv_name)`` returns the IOC's channel for a PV (or None); ``prefix`` is the IOC
    prefix (``PARAM`` sources are driver PVs below it).

    Raises
    ------
    NDAttributeError
        If the text is not an ``<Attributes>`` document.
    """
    if "<!DOCTYPE" in xml_text or "<!ENTITY" in xml_text:
        raise NDAttributeError("NDAttributes XML with DOCTYPE/ENTITY declarations refused")
    try:
        root = ElementTree.fromstring(xml_text)
    except ElementTree.ParseError as exc:
        raise NDAttributeError(f"NDAttributes XML syntax error: {exc}") from exc
    if root.tag != "Attributes":
        raise NDAttributeError(f"NDAttributes XML root is <{root.tag}>, not <Attributes>")
    specs: list[AttributeSpec] = []
    problems: list[str] = []
    for child in root:
        if child.tag != "Attribute":
            problems.append(f"ignored element <{child.tag}>")
            continue
        name = child.attrib.get("name", "")
        kind = child.attrib.get("type", "EPICS_PV")
        source = child.attrib.get("source", "")
        desc = child.attrib.get("description", "")
        if not name or not source:
            problems.append(f"attribute {name!r}: 'name' and 'source' are required")
            continue
        if kind == "EPICS_PV":
            dbr = child.attrib.get("dbrtype", "DBR_NATIVE")
            channel = lookup(source)
            if dbr == "DBR_NATIVE":
                dbr = "DBR_DOUBLE" if channel is None else _native_dbr(channel)
            if dbr not in DBR_DTYPES:
                problems.append(f"attribute {name!r}: unknown dbrtype {dbr!r}")
                continue
            if channel is None:
                problems.append(f"attribute {name!r}: PV {source!r} is not served by this "
                                "IOC; recorded as NaN (or 0)")
            specs.append(AttributeSpec(name, kind, source, DBR_DTYPES[dbr], desc))
        elif kind == "PARAM":
            datatype = child.attrib.get("datatype", "INT")
            if datatype not in PARAM_DTYPES:
                problems.append(f"attribute {name!r}: unknown datatype {datatype!r}")
                continue
            if source not in PARAMS:
                problems.append(f"attribute {name!r}: driver parameter {source!r} is not "
                                f"simulated (known: {', '.join(PARAMS)}); recorded as fill")
            specs.append(AttributeSpec(name, kind, source, PARAM_DTYPES[datatype], desc))
        else:
            problems.append(f"attribute {name!r}: type {kind!r} is not supported by the "
                            "simulation (EPICS_PV and PARAM are)")
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise NDAttributeError(f"NDAttributes XML names {dupes} more than once")
    return specs, problems


def _native_dbr(channel: Any) -> str:
    value = channel.value
    if isinstance(value, str | bytes):
        return "DBR_STRING"
    if isinstance(value, float | np.floating):
        return "DBR_DOUBLE"
    return "DBR_LONG"


def evaluate(specs: list[AttributeSpec], prefix: str,
             lookup: Callable[[str], Any]) -> dict[str, tuple[Any, str, str, str, str]]:
    """Read every attribute now: ``name -> (value, dtype, description, type, source)``."""
    out: dict[str, tuple[Any, str, str, str, str]] = {}
    for spec in specs:
        pv = spec.source if spec.source_type == "EPICS_PV" else (
            f"{prefix}{PARAMS[spec.source]}" if spec.source in PARAMS else "")
        channel = lookup(pv) if pv else None
        value = spec.fill if channel is None else _convert(channel.value, spec)
        out[spec.name] = (value, spec.dtype, spec.description, spec.source_type, spec.source)
    return out


def _convert(value: Any, spec: AttributeSpec) -> Any:
    if isinstance(value, np.ndarray | list | tuple):
        value = value[0] if len(value) else spec.fill
    kind = np.dtype(spec.dtype).kind
    try:
        if kind == "S":
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            return text.encode("latin-1", "replace")[:40]
        if kind == "f":
            return float(value)
        return int(value)
    except (TypeError, ValueError):
        return spec.fill


def attributes_xml(specs: list[tuple[str, str, str]]) -> str:
    """Return an NDAttributes XML of ``(name, pv, description)`` EPICS_PV DBR_DOUBLE attributes."""
    root = ElementTree.Element("Attributes")
    for name, pv, desc in specs:
        ElementTree.SubElement(root, "Attribute", name=name, type="EPICS_PV", source=pv,
                               dbrtype="DBR_DOUBLE", description=desc)
    return ElementTree.tostring(root, encoding="unicode")
