"""Shared pieces of the simulated areaDetector: PV helpers, choice sets, the NDArray.

The choice sets are the ones ADCore and ADPilatus serve (ophyd-async checks them exactly:
see ``/work/shared/NOTES.md``). Setpoint/readback pairs are caproto
``get_pv_pair_wrapper`` sub-groups: ``X`` and ``X_RBV`` share one DBR type and element count,
and the default putter mirrors the setpoint into the readback, as every areaDetector record
pair does.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from caproto import ChannelType
from caproto import _constants as caproto_constants
from caproto.server import PvpropertyChar, get_pv_pair_wrapper, pvproperty

__all__ = [
    "ACQUIRE", "COLOR_MODES", "LongString", "COMPRESSIONS", "DATA_TYPES", "DETECTOR_STATES",
    "DISABLE_ENABLE", "EPICS_EPOCH_OFFSET_S", "FILE_WRITE_MODES", "IMAGE_MODES", "NO_YES",
    "PILATUS_TRIGGER_MODES", "STRING_LENGTH", "XML_LENGTH", "NDArray", "TemplateError",
    "choice_index", "enum_pair", "format_file_template", "is_on", "number_pair", "string_pair",
    "enum_pv", "string_pv", "subscription_backlog",
]

rbv_pair = get_pv_pair_wrapper(setpoint_suffix="", readback_suffix="_RBV")


class LongString(PvpropertyChar):
    """A char-waveform string that also accepts an empty string from a client.

    caproto 1.3 fails to convert the single NUL byte a client sends for ``""`` (ophyd-async
    writes ``XMLFileName = ""``); a real areaDetector waveform takes it.
    """

    async def write_from_dbr(self, data: Any, data_type: Any, metadata: Any, *,
                             flags: int = 0) -> Any:
        """Write a client's value, decoding a char array up to its first NUL as text."""
        if data_type == ChannelType.CHAR:
            raw = data if isinstance(data, bytes) else np.asarray(data, np.uint8).tobytes()
            return await self.write(raw.split(b"\0", 1)[0].decode(self.string_encoding),
                                    flags=flags)
        return await super().write_from_dbr(data, data_type, metadata, flags=flags)

STRING_LENGTH = 1024
"""Element count of the char-waveform string PVs (paths, names, templates)."""
XML_LENGTH = 16384
"""Element count of ``NDAttributesFile``: holds a file name or the XML text itself."""
EPICS_EPOCH_OFFSET_S = 631152000.0
"""Seconds from the POSIX epoch to the EPICS epoch (1990-01-01 UTC)."""

NO_YES = ("No", "Yes")
DISABLE_ENABLE = ("Disable", "Enable")
ACQUIRE = ("Done", "Acquire")
IMAGE_MODES = ("Single", "Multiple", "Continuous")
PILATUS_TRIGGER_MODES = ("Internal", "Ext. Enable", "Ext. Trigger", "Mult. Trigger",
                         "Alignment")
DETECTOR_STATES = ("Idle", "Acquire", "Readout", "Correct", "Saving", "Aborting", "Error",
                   "Waiting", "Initializing", "Disconnected", "Aborted")
DATA_TYPES = ("Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
              "Float32", "Float64")
COLOR_MODES = ("Mono", "Bayer", "RGB1", "RGB2", "RGB3", "YUV444", "YUV422", "YUV421")
FILE_WRITE_MODES = ("Single", "Capture", "Stream")
COMPRESSIONS = ("None", "N-bit", "szip", "zlib", "Blosc", "BSLZ4", "LZ4", "JPEG")


# -- PV factories --------------------------------------------------------------------------
def number_pair(name: str, value: float | int, doc: str = "", **kwargs: Any) -> Any:
    """``name`` + ``name_RBV``: LONG for an int ``value``, DOUBLE for a float."""
    dtype = ChannelType.LONG if isinstance(value, int) else ChannelType.DOUBLE
    return rbv_pair(name=name, value=value, dtype=dtype, doc=doc or name, **kwargs)


def enum_pair(name: str, choices: tuple[str, ...], value: int = 0, doc: str = "") -> Any:
    """``name`` + ``name_RBV`` as enums with ``choices`` (bo/bi or mbbo/mbbi records)."""
    return rbv_pair(name=name, value=choices[value], dtype=ChannelType.ENUM,
                    enum_strings=choices, doc=doc or name)


def string_pair(name: str, value: str = "", doc: str = "",
                max_length: int = STRING_LENGTH) -> Any:
    """``name`` + ``name_RBV`` as char waveforms (areaDetector's long strings)."""
    return rbv_pair(name=name, value=value, dtype=ChannelType.CHAR, max_length=max_length,
                    doc=doc or name, setpoint_kw={"dtype": LongString})


def enum_pv(name: str, choices: tuple[str, ...], value: int = 0, read_only: bool = False,
            doc: str = "") -> pvproperty:
    """Return a single enum PV (no readback)."""
    return pvproperty(name=name, value=choices[value], dtype=ChannelType.ENUM,
                      enum_strings=choices, read_only=read_only, doc=doc or name)


def subscription_backlog(max_length: int) -> int:
    """Return the per-subscription backlog of a waveform of ``max_length`` elements.

    caproto keeps up to 1000 queued updates per subscription and, for a long waveform (a
    1M-pixel ``ArrayData``), warns at start-up that this could take much memory and lowers
    it. Chosen here, under caproto's warning threshold, the same limit holds without the
    start-up warning a user cannot act on.
    """
    threshold = caproto_constants.SUBSCRIPTION_BACKLOG_WARN_THRESHOLD_ELEMENTS
    default = caproto_constants.MAX_SUBSCRIPTION_BACKLOG
    if threshold <= 1 or max_length <= 1:
        return default
    return max(caproto_constants.MIN_SUBSCRIPTION_BACKLOG,
               min(default, (threshold - 1) // max_length))


def string_pv(name: str, value: str = "", read_only: bool = True, doc: str = "",
              max_length: int = STRING_LENGTH) -> pvproperty:
    """Return a single char-waveform string PV."""
    return pvproperty(name=name, value=value, max_length=max_length, read_only=read_only,
                      dtype=ChannelType.CHAR if read_only else LongString, doc=doc or name,
                      max_subscription_backlog=subscription_backlog(max_length))


def choice_index(value: Any, choices: tuple[str, ...]) -> int:
    """Index of an enum value given as a choice string or an index."""
    if isinstance(value, str):
        return choices.index(value)
    return int(value)


def is_on(value: Any) -> bool:
    """Return True for a two-state enum in its second state (``"Yes"``, ``"Enable"``, 1, ...)."""
    if isinstance(value, str):
        return value not in ("", "No", "Disable", "Done", "Off", "Closed", "Unarmed", "0")
    return bool(value)


# -- the NDArray ---------------------------------------------------------------------------
@dataclass
class NDArray:
    """One frame as the driver hands it to its plugins.

    Parameters
    ----------
    data
        The image, shape (ny, nx).
    unique_id
        ``UniqueId`` of the array (counts from 1 since the IOC started).
    timestamp
        POSIX time of the end of the exposure.
    attributes
        NDAttribute values by name: ``(value, numpy dtype, description, source type,
        source)``.
    """

    data: np.ndarray
    unique_id: int
    timestamp: float = field(default_factory=time.time)
    attributes: dict[str, tuple[Any, str, str, str, str]] = field(default_factory=dict)

    @property
    def epics_ts(self) -> tuple[int, int]:
        """The EPICS timestamp (seconds since 1990, nanoseconds)."""
        t = self.timestamp - EPICS_EPOCH_OFFSET_S
        sec = int(t)
        return sec, int(round((t - sec) * 1e9))


# -- C-style file templates ----------------------------------------------------------------
class TemplateError(ValueError):
    """A ``FileTemplate`` that C's snprintf could not format with (path, name, number)."""


_CONVERSION = re.compile(r"%([-+ #0]*)(\d*)(?:\.(\d+))?([a-zA-Z%])")


def format_file_template(template: str, path: str, name: str, number: int) -> str:
    """Format an areaDetector ``FileTemplate`` as ``snprintf(template, path, name, number)``.

    Like C, a template may use fewer conversions than arguments (ophyd-async sends the
    two-argument ``"%s%s.h5"``); conversions beyond the three arguments, or of the wrong
    kind (``%d`` for the path), are a :class:`TemplateError`.
    """
    args: list[Any] = [path, name, int(number)]
    out: list[str] = []
    pos = 0
    used = 0
    for m in _CONVERSION.finditer(template):
        out.append(template[pos:m.start()])
        pos = m.end()
        flags, width, precision, conv = m.groups()
        if conv == "%":
            out.append("%")
            continue
        if used >= len(args):
            raise TemplateError(f"FileTemplate {template!r} needs more than 3 arguments")
        arg = args[used]
        used += 1
        if conv == "s":
            if not isinstance(arg, str):
                raise TemplateError(f"FileTemplate {template!r}: %s given the file number")
        elif conv in "diouxX":
            if not isinstance(arg, int):
                raise TemplateError(f"FileTemplate {template!r}: %{conv} given a string "
                                    "(the template must start with two %s)")
            conv = "d" if conv in "iu" else conv
        else:
            raise TemplateError(f"FileTemplate {template!r}: unsupported conversion %{conv}")
        spec = f"%{flags}{width}{'.' + precision if precision else ''}{conv}"
        out.append(spec % arg)
    out.append(template[pos:])
    return "".join(out)
