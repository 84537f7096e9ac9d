"""Builders of raw-run document streams (event-model), as RunEngines emit them."""

from __future__ import annotations

from typing import Any

import numpy as np
from event_model import compose_run

IMAGE_KEY = "det_image"


def run_docs(metadata: dict[str, Any], shots: list[tuple], *, shape: list[int] | None = None,
             keys: dict[str, str] | None = None, extra_keys: dict[str, dict] | None = None
             ) -> tuple[str, list[tuple[str, dict]]]:
    """One run with inline frames: shots are (frame, i0, transmission[, extra values])."""
    keys = {"image": IMAGE_KEY, "i0": "beam_i0", "transmission": "beam_transmission",
            **(keys or {})}
    bundle = compose_run(metadata=metadata)
    docs: list[tuple[str, dict]] = [("start", bundle.start_doc)]
    if shots:
        shape = shape or list(np.asarray(shots[0][0]).shape)
        data_keys = {keys["image"]: {"dtype": "array", "shape": shape, "source": "sim",
                                     "dtype_numpy": "<i4"}}
        if keys["i0"]:
            data_keys[keys["i0"]] = {"dtype": "number", "shape": [], "source": "sim"}
        if keys["transmission"]:
            data_keys[keys["transmission"]] = {"dtype": "number", "shape": [], "source": "sim"}
        data_keys.update(extra_keys or {})
        desc = bundle.compose_descriptor(name="primary", data_keys=data_keys)
        docs.append(("descriptor", desc.descriptor_doc))
        for seq, shot in enumerate(shots, start=1):
            frame, i0, trans = shot[:3]
            data = {keys["image"]: frame}
            if keys["i0"]:
                data[keys["i0"]] = i0
            if keys["transmission"]:
                data[keys["transmission"]] = trans
            for (k, _), v in zip((extra_keys or {}).items(), shot[3:], strict=False):
                data[k] = v
            docs.append(("event", desc.compose_event(
                data=data, timestamps=dict.fromkeys(data, 0.0), seq_num=seq, validate=False)))
    docs.append(("stop", bundle.compose_stop()))
    return bundle.start_doc["uid"], docs


def feed(callback, docs: list[tuple[str, dict]]) -> None:
    for name, doc in docs:
        callback(name, doc)


def stream_run_docs(metadata: dict[str, Any], uri: str, n_frames: int, shape: list[int], *,
                    attributes: dict[str, str] | None = None
                    ) -> tuple[str, list[tuple[str, dict]]]:
    """A run as ophyd-async writes it: StreamResource/StreamDatum for the frames and, for
    each name in ``attributes`` (data key -> HDF5 dataset), for an NDAttribute dataset."""
    bundle = compose_run(metadata=metadata)
    docs: list[tuple[str, dict]] = [("start", bundle.start_doc)]
    data_keys = {IMAGE_KEY: {"dtype": "array", "shape": [1, *shape], "source": "sim",
                             "dtype_numpy": "<i4", "external": "STREAM:"}}
    for key in attributes or {}:
        data_keys[key] = {"dtype": "number", "shape": [], "source": "sim",
                          "dtype_numpy": "<f8", "external": "STREAM:"}
    desc = bundle.compose_descriptor(name="primary", data_keys=data_keys)
    docs.append(("descriptor", desc.descriptor_doc))
    resources = [bundle.compose_stream_resource(
        mimetype="application/x-hdf5", uri=uri, data_key=IMAGE_KEY,
        parameters={"dataset": "/entry/data/data"})]
    for key, dataset in (attributes or {}).items():
        resources.append(bundle.compose_stream_resource(
            mimetype="application/x-hdf5", uri=uri, data_key=key,
            parameters={"dataset": dataset}))
    for res in resources:
        docs.append(("stream_resource", res.stream_resource_doc))
    for res in reversed(resources):  # attributes first: order must not matter
        docs.append(("stream_datum", res.compose_stream_datum(
            indices={"start": 0, "stop": n_frames}, seq_nums={"start": 1, "stop": n_frames + 1},
            descriptor=desc.descriptor_doc)))
    docs.append(("stop", bundle.compose_stop()))
    return bundle.start_doc["uid"], docs
