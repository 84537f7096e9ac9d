"""1D profile files: 3-column ASCII, NXcanSAS HDF5 and (read only) canSAS 1D XML."""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.typing import NDArray

from ..profile import Profile, ProfileError
from .errors import ReductionError

__all__ = [
    "ASCII_SUFFIXES",
    "CANSAS_XML_SUFFIXES",
    "NXCANSAS_SUFFIXES",
    "read_ascii",
    "read_cansas_xml",
    "read_nxcansas",
    "read_profile",
    "write_ascii",
    "write_nxcansas",
]

logger = logging.getLogger(__name__)

ASCII_SUFFIXES = (".dat", ".txt", ".csv", ".chi")
NXCANSAS_SUFFIXES = (".h5", ".nxs", ".hdf5")
CANSAS_XML_SUFFIXES = (".xml",)
_NM_PATTERN = re.compile(r"(1\s*/\s*nm|nm\s*\^?\s*-\s*1|nm-1|inv_?nm)", re.IGNORECASE)
_ANGSTROM_UNITS = {"1/angstrom", "1/a", "a^-1", "angstrom^-1", "1/å", "å^-1", "1/ang",
                   "ang^-1"}
_NM_UNITS = {"1/nm", "nm^-1", "nm-1"}


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return value.replace("\n", " ")
    try:
        return json.dumps(value, default=str)
    except TypeError:
        return str(value)


def write_ascii(profile: Profile, path: str | Path) -> Path:
    """Write ``q I sigma`` columns (q in 1/angstrom) with ``# key: value`` header lines."""
    path = Path(path)
    lines = ["# pbi_bluesky 1D profile", "# q_unit: 1/angstrom"]
    lines += [f"# {k}: {_fmt(v)}" for k, v in profile.metadata.items()]
    if profile.provenance:
        lines.append(f"# provenance: {_fmt(profile.provenance)}")
    lines.append("# q(1/angstrom) I sigma")
    data = np.column_stack([profile.q_inv_angstrom, profile.intensity, profile.sigma])
    with path.open("w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
        np.savetxt(fh, data, fmt="%.10e")
    logger.debug("wrote %d points to %s", profile.npt, path)
    return path


def _parse_header(lines: list[str]) -> tuple[dict[str, Any], dict[str, Any], bool]:
    metadata: dict[str, Any] = {}
    provenance: dict[str, Any] = {}
    q_in_nm = False
    for line in lines:
        text = line.lstrip("#").strip()
        key, sep, value = text.partition(":")
        key, value = key.strip(), value.strip()
        if sep and key.lower() in ("q_unit", "q_units", "q unit"):
            q_in_nm = bool(_NM_PATTERN.search(value))
            continue
        if _NM_PATTERN.search(text) and "q" in text.lower() and not sep:
            q_in_nm = True  # column header such as "# q(nm^-1) I sigma"
            continue
        if not sep or not key:
            continue
        try:
            parsed = json.loads(value)
        except (json.JSONDecodeError, ValueError):
            parsed = value
        if key == "provenance" and isinstance(parsed, dict):
            provenance = parsed
        else:
            metadata[key] = parsed
    return metadata, provenance, q_in_nm


def read_ascii(path: str | Path) -> Profile:
    """Read a 2- or 3-column ASCII profile; q given in 1/nm (per the header) becomes 1/A."""
    path = Path(path)
    if not path.is_file():
        raise ReductionError(f"profile file {path} not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    header = [ln for ln in text.splitlines() if ln.lstrip().startswith("#")]
    body = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not body:
        raise ReductionError(f"profile file {path} is empty (no data rows)")
    rows = []
    for n, line in enumerate(body, 1):
        try:
            rows.append([float(v) for v in line.replace(",", " ").split()])
        except ValueError as exc:
            raise ReductionError(f"profile file {path}: non-numeric data row {n}: "
                                 f"{line.strip()!r}") from exc
    widths = {len(r) for r in rows}
    if len(widths) != 1 or widths.pop() not in (2, 3, 4):
        raise ReductionError(f"profile file {path}: rows must all have 2 or 3 columns")
    data = np.array(rows, dtype=np.float64)
    metadata, provenance, q_in_nm = _parse_header(header)
    q = data[:, 0] / 10.0 if q_in_nm else data[:, 0]
    sigma = data[:, 2] if data.shape[1] >= 3 else np.zeros(len(q))
    if q_in_nm:
        logger.info("%s: q converted from 1/nm to 1/angstrom", path)
    try:
        return Profile(q, data[:, 1], sigma, metadata, provenance)
    except ProfileError as exc:
        raise ReductionError(f"profile file {path}: {exc}") from exc


def write_nxcansas(profile: Profile, path: str | Path, title: str = "") -> Path:
    """Write an NXcanSAS file (``/sasentry01/sasdata01`` with Q, I, Idev)."""
    path = Path(path)
    units = profile.metadata.get("units", "arbitrary")
    i_units = "1/cm" if units == "1/cm" else "arbitrary"
    with h5py.File(path, "w") as h5:
        h5.attrs["default"] = "sasentry01"
        entry = h5.create_group("sasentry01")
        entry.attrs.update({"NX_class": "NXentry", "canSAS_class": "SASentry",
                            "version": "1.1", "default": "sasdata01"})
        entry["definition"] = "NXcanSAS"
        entry["title"] = title or str(profile.metadata.get("sample", ""))
        entry["run"] = str(profile.metadata.get("run", ""))
        data = entry.create_group("sasdata01")
        data.attrs.update({"NX_class": "NXdata", "canSAS_class": "SASdata", "signal": "I",
                           "I_axes": "Q", "Q_indices": 0})
        q = data.create_dataset("Q", data=profile.q_inv_angstrom)
        q.attrs["units"] = "1/angstrom"
        i = data.create_dataset("I", data=profile.intensity)
        i.attrs.update({"units": i_units, "uncertainties": "Idev"})
        idev = data.create_dataset("Idev", data=profile.sigma)
        idev.attrs["units"] = i_units
        process = entry.create_group("sasprocess01")
        process.attrs.update({"NX_class": "NXprocess", "canSAS_class": "SASprocess"})
        process["name"] = "pbi_bluesky reduction"
        process["metadata"] = json.dumps(profile.metadata, default=str)
        process["provenance"] = json.dumps(profile.provenance, default=str)
    logger.debug("wrote NXcanSAS %s", path)
    return path


def _str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return _str(value.reshape(-1)[0]) if value.size else ""
    return str(value)


def _find_sasentry(h5: h5py.File) -> h5py.Group:
    for group in h5.values():
        if isinstance(group, h5py.Group) and (
            _str(group.attrs.get("canSAS_class", "")) == "SASentry"
            or _str(group.attrs.get("NX_class", "")) == "NXentry"
        ):
            return group
    raise ReductionError(f"{h5.filename}: no NXcanSAS SASentry group")


def read_nxcansas(path: str | Path) -> Profile:
    """Read the first SASdata of an NXcanSAS file; Q in 1/nm is converted to 1/angstrom."""
    path = Path(path)
    if not path.is_file():
        raise ReductionError(f"profile file {path} not found")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise ReductionError(f"profile file {path} is not readable HDF5: {exc}") from exc
    with h5:
        entry = _find_sasentry(h5)
        groups = [g for g in entry.values() if isinstance(g, h5py.Group)
                  and _str(g.attrs.get("canSAS_class", "")) == "SASdata"]
        if not groups:
            raise ReductionError(f"{path}: SASentry has no SASdata group")
        sasdata = groups[0]
        signal = _str(sasdata.attrs.get("signal", "I"))
        axes = _str(sasdata.attrs.get("I_axes", "Q"))
        if signal not in sasdata or axes not in sasdata:
            raise ReductionError(f"{path}: SASdata lacks {signal!r} or {axes!r}")
        q = np.asarray(sasdata[axes][()], dtype=np.float64)
        q_units = _str(sasdata[axes].attrs.get("units", "1/angstrom")).strip().lower()
        intensity = np.asarray(sasdata[signal][()], dtype=np.float64)
        unc = _str(sasdata[signal].attrs.get("uncertainties", sasdata.attrs.get(
            "uncertainties", "Idev")))
        sigma = (np.asarray(sasdata[unc][()], dtype=np.float64) if unc in sasdata
                 else np.zeros_like(intensity))
        i_units = _str(sasdata[signal].attrs.get("units", "arbitrary"))
        metadata: dict[str, Any] = {}
        provenance: dict[str, Any] = {}
        for g in entry.values():
            if isinstance(g, h5py.Group) and _str(g.attrs.get("canSAS_class", "")) == \
                    "SASprocess":
                if "metadata" in g:
                    metadata = json.loads(_str(g["metadata"][()]))
                if "provenance" in g:
                    provenance = json.loads(_str(g["provenance"][()]))
                break
    if q_units in _NM_UNITS:
        q = q / 10.0
    elif q_units not in _ANGSTROM_UNITS:
        raise ReductionError(f"{path}: unsupported Q units {q_units!r}")
    metadata.setdefault("units", "1/cm" if i_units == "1/cm" else "arbitrary")
    try:
        return Profile(q, intensity, sigma, metadata, provenance)
    except ProfileError as exc:
        raise ReductionError(f"profile file {path}: {exc}") from exc


_LENGTH_TO_CM = {"mm": 0.1, "cm": 1.0, "m": 100.0, "um": 1e-4, "a": 1e-8, "nm": 1e-7}


def _xml_number(element: ElementTree.Element | None, what: str, path: Path) -> float:
    if element is None or element.text is None:
        raise ReductionError(f"{path}: an Idata row has no {what}")
    try:
        return float(element.text)
    except ValueError:
        raise ReductionError(f"{path}: {what} {element.text!r} is not a number") from None


def _xml_sigma(row: ElementTree.Element, path: Path) -> float:
    """Idev of one row; a missing or empty Idev is 0 (no uncertainty given)."""
    element = row.find("Idev")
    if element is None or element.text is None or not element.text.strip():
        return 0.0
    return _xml_number(element, "Idev", path)


def _unit(text: str | None, default: str) -> str:
    """Normalise a unit string for lookup: lower case, no spaces or braces."""
    return (text or default).strip().lower().replace(" ", "").replace("{", "").replace("}", "")


def _merge_duplicate_q(
    q: NDArray, intensity: NDArray, sigma: NDArray
) -> tuple[NDArray, NDArray, NDArray]:
    """Sort by q and merge rows with the same q.

    Rows with the same q (merged detector banks) become their inverse-variance weighted
    mean (plain mean where a sigma is 0).
    """
    order = np.argsort(q, kind="stable")
    q, intensity, sigma = q[order], intensity[order], sigma[order]
    unique, start = np.unique(q, return_index=True)
    if len(unique) == len(q):
        return q, intensity, sigma
    out_i, out_s = [], []
    for lo, hi in zip(start, list(start[1:]) + [len(q)], strict=True):
        i, s = intensity[lo:hi], sigma[lo:hi]
        if np.all(s > 0):
            w = 1.0 / s**2
            out_i.append(float(np.sum(w * i) / np.sum(w)))
            out_s.append(float(1.0 / np.sqrt(np.sum(w))))
        else:
            out_i.append(float(np.mean(i)))
            out_s.append(float(np.sqrt(np.sum(s**2)) / len(s)))
    return unique, np.array(out_i), np.array(out_s)


def read_cansas_xml(path: str | Path) -> Profile:
    """Read the first SASentry/SASdata of a canSAS 1D XML file (format 1.0 or 1.1).

    Q in 1/nm is converted to 1/angstrom (units are read from the first row); ``Idev``
    (when present) becomes sigma; rows are sorted by Q and rows sharing one Q (merged
    detector banks) are merged by inverse-variance weighting. Title, run, sample thickness
    and the kind of resolution given (``Qdev`` pinhole, ``dQl``/``dQw`` slit; it is not
    used) go into the metadata. Further SASdata or SASentry blocks are ignored. Entities
    are not expanded beyond what the standard library's expat parser allows (no external
    entities are fetched).
    """
    path = Path(path)
    if not path.is_file():
        raise ReductionError(f"profile file {path} not found")
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        raise ReductionError(f"profile file {path} is not valid XML: {exc}") from exc
    for element in root.iter():  # drop the canSAS namespace (1.0 and 1.1 differ)
        element.tag = element.tag.rsplit("}", 1)[-1]
    entry = root if root.tag == "SASentry" else root.find("SASentry")
    sasdata = entry.find("SASdata") if entry is not None else None
    if entry is None or sasdata is None:
        raise ReductionError(f"{path}: no SASentry/SASdata (not a canSAS 1D XML file)")
    rows = sasdata.findall("Idata")
    if not rows:
        raise ReductionError(f"{path}: SASdata has no Idata rows")
    q = np.array([_xml_number(r.find("Q"), "Q", path) for r in rows])
    intensity = np.array([_xml_number(r.find("I"), "I", path) for r in rows])
    sigma = np.array([_xml_sigma(r, path) for r in rows])
    first_q, first_i = rows[0].find("Q"), rows[0].find("I")
    q_units = _unit(first_q.get("unit") if first_q is not None else None, "1/a")
    i_units = _unit(first_i.get("unit") if first_i is not None else None, "")
    if q_units in _NM_UNITS:
        q = q / 10.0
    elif q_units not in _ANGSTROM_UNITS:
        raise ReductionError(f"{path}: unsupported Q units {q_units!r}")
    q, intensity, sigma = _merge_duplicate_q(q, intensity, sigma)
    metadata: dict[str, Any] = {"units": "1/cm" if i_units in ("1/cm", "cm^-1") else "arbitrary"}
    for key, tag in (("title", "Title"), ("run", "Run")):
        found = entry.find(tag)
        if found is not None and found.text:
            metadata[key] = found.text.strip()
    if rows[0].find("dQl") is not None or rows[0].find("dQw") is not None:
        metadata["resolution"] = "slit"
    elif rows[0].find("Qdev") is not None:
        metadata["resolution"] = "pinhole"
    thickness = entry.find("SASsample/thickness")
    if thickness is not None and thickness.text:
        unit = _unit(thickness.get("unit"), "mm")
        try:
            if unit in _LENGTH_TO_CM:
                metadata["thickness_cm"] = float(thickness.text) * _LENGTH_TO_CM[unit]
        except ValueError:
            logger.warning("%s: sample thickness %r is not a number; ignored", path,
                           thickness.text)
    provenance = {"source_file": str(path), "format": "canSAS 1D XML",
                  "canSAS_version": root.get("version", "")}
    try:
        return Profile(q, intensity, sigma, metadata, provenance)
    except ProfileError as exc:
        raise ReductionError(f"profile file {path}: {exc}") from exc


def read_profile(path: str | Path) -> Profile:
    """Read a profile, choosing the format from the file extension."""
    suffix = Path(path).suffix.lower()
    if suffix in ASCII_SUFFIXES:
        return read_ascii(path)
    if suffix in NXCANSAS_SUFFIXES:
        return read_nxcansas(path)
    if suffix in CANSAS_XML_SUFFIXES:
        return read_cansas_xml(path)
    raise ReductionError(f"unknown profile file extension {suffix!r} for {path}; expected one "
                         f"of {ASCII_SUFFIXES + NXCANSAS_SUFFIXES + CANSAS_XML_SUFFIXES}")
