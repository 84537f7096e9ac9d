"""Documents on the wire and on disk: msgpack with numpy arrays, never pickle.

One encoding is used everywhere a bluesky document leaves the process: the 0MQ publisher
and remote scorer, the durable document bus, and the local spool. Arrays travel as a
msgpack extension (dtype string, shape, raw bytes: no base64 inflation); only plain numeric
dtypes are accepted (no object arrays), so decoding can only ever build data, never run
code. Anything msgpack cannot represent is an :class:`EncodeError` naming the key.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

__all__ = ["DecodeError", "EncodeError", "decode", "decode_document", "encode",
           "encode_document", "sanitize", "unpacker"]

_NDARRAY = 1
_ALLOWED_KINDS = set("biufcSU")  # bool, ints, floats, complex, bytes, unicode: no objects


class EncodeError(TypeError):
    """A document holds something that cannot go on the wire."""


class DecodeError(ValueError):
    """Bytes that are not a valid encoded document."""


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise EncodeError(f"arrays of dtype {obj.dtype} cannot be encoded")
        data = np.ascontiguousarray(obj)
        header = msgpack.packb([data.dtype.str, list(data.shape)])
        return msgpack.ExtType(_NDARRAY, header + data.tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise EncodeError(f"cannot encode {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _NDARRAY:
        raise DecodeError(f"unknown msgpack extension type {code}")
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    try:
        dtype_str, shape = next(unpacker)
    except (StopIteration, ValueError) as exc:
        raise DecodeError("malformed array header") from exc
    dtype = np.dtype(dtype_str)
    if dtype.kind not in _ALLOWED_KINDS:
        raise DecodeError(f"array dtype {dtype} is not allowed")
    offset = len(msgpack.packb([dtype_str, shape]))
    payload = data[offset:]
    count = int(np.prod(shape)) if shape else 1
    if len(payload) != count * dtype.itemsize:
        raise DecodeError(f"array payload of {len(payload)} bytes does not match "
                          f"shape {shape} x {dtype}")
    return np.frombuffer(payload, dtype=dtype).reshape(shape).copy()


def encode(obj: Any) -> bytes:
    """Msgpack bytes of plain data with numpy arrays."""
    try:
        return msgpack.packb(obj, default=_default, use_bin_type=True)
    except EncodeError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(str(exc)) from exc


def decode(data: bytes) -> Any:
    """Inverse of :func:`encode`; raises :class:`DecodeError` on anything else."""
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types
        raise DecodeError(f"not an encoded document: {exc}") from exc


def sanitize(value: Any) -> tuple[Any, list[str]]:
    """``value`` with everything :func:`encode` refuses replaced by its ``repr()``.

    Used wherever a document must leave the process whatever it holds (the bus publisher,
    the spool on the RunEngine thread): datetime64 values, structured or object arrays,
    integers of 2**64 and more, arbitrary objects.

    Parameters
    ----------
    value
        A document (or any part of one).

    Returns
    -------
    tuple
        The encodable copy and the paths (``key.sub[3]``) of the values replaced.
    """
    paths: list[str] = []
    return _sanitize(value, "", paths), paths


def _sanitize(value: Any, path: str, paths: list[str]) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            where = f"{path}.{k}" if path else str(k)
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                paths.append(f"{where} (key)")
                k = repr(k)
            out[k] = _sanitize(v, where, paths)
        return out
    if isinstance(value, (list, tuple)):
        return [_sanitize(v, f"{path}[{i}]", paths) for i, v in enumerate(value)]
    try:
        encode(value)
        return value
    except EncodeError:
        paths.append(path)
        return repr(value)


def encode_document(name: str, doc: dict[str, Any]) -> bytes:
    """One ``(name, doc)`` pair."""
    return encode({"name": name, "doc": doc})


def decode_document(data: bytes) -> tuple[str, dict[str, Any]]:
    """Inverse of :func:`encode_document`, validating the envelope."""
    record = decode(data)
    if not (isinstance(record, dict) and isinstance(record.get("name"), str)
            and isinstance(record.get("doc"), dict)):
        raise DecodeError("not a (name, document) record")
    return record["name"], record["doc"]


def unpacker() -> msgpack.Unpacker:
    """Return a streaming unpacker for a file of concatenated records (the spool)."""
    return msgpack.Unpacker(ext_hook=_ext_hook, raw=False, strict_map_key=False,
                            max_buffer_size=1 << 31)
