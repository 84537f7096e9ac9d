"""Raw runs for the bus tests (inline, Resource/Datum and StreamResource frames) and reading
the analysis runs back from Tiled."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from event_model import compose_run

from pbi_bluesky.simulate import (
    PS_PMMA,
    apply_anomaly,
    nominal_state,
    render_empty_cell,
    render_frame,
)
from tests.live.docs import IMAGE_KEY, run_docs, stream_run_docs

KINDS = ("normal", "contamination", "normal", "thickness_error", "normal", "normal")


def shots(instrument, rng, n: int, recipe: str = "50:50", kinds=KINDS) -> list[tuple]:
    """(frame, i0, transmission) of ``n`` frames cycling through ``kinds``."""
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        state = nominal_state(PS_PMMA, recipe, rng)
        if kind != "normal":
            state = apply_anomaly(state, kind, 0.8, rng)
        shot = render_frame(state, instrument, rng)
        out.append((shot.frame, shot.monitor, shot.transmission))
    return out


def cell_run(instrument, rng, poni_text: str) -> tuple[str, list]:
    cell = render_empty_cell(instrument, rng)
    return run_docs({"geometry": poni_text, "sample_type": "empty_cell", "sample": "cell"},
                    [(cell.frame, cell.monitor, cell.transmission)])


def sample_md(poni_text: str, **more: Any) -> dict[str, Any]:
    return {"geometry": poni_text, "thickness_cm": 0.1, "composition": "50:50",
            "sample": "s", **more}


def datum_run(md: dict, frames: list[tuple], folder: Path) -> tuple[str, list]:
    """Frames in an AD_HDF5 file, events carry datum ids (stock ophyd's layout)."""
    import h5py

    path = folder / f"datum_{time.monotonic_ns()}.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("/entry/data/data", data=np.stack([f[0] for f in frames]))
    bundle = compose_run(metadata=md)
    docs: list[tuple[str, dict]] = [("start", bundle.start_doc)]
    shape = list(frames[0][0].shape)
    desc = bundle.compose_descriptor(name="primary", data_keys={
        IMAGE_KEY: {"dtype": "array", "shape": shape, "source": "sim", "external": "FILESTORE:",
                    "dtype_numpy": "<i4"},
        "beam_i0": {"dtype": "number", "shape": [], "source": "sim"},
        "beam_transmission": {"dtype": "number", "shape": [], "source": "sim"}})
    docs.append(("descriptor", desc.descriptor_doc))
    res = bundle.compose_resource(spec="AD_HDF5", root=str(folder), resource_path=path.name,
                                  resource_kwargs={"frame_per_point": 1})
    docs.append(("resource", res.resource_doc))
    for seq, (_frame, i0, trans) in enumerate(frames, start=1):
        datum = res.compose_datum(datum_kwargs={"point_number": seq - 1})
        docs.append(("datum", datum))
        data = {IMAGE_KEY: datum["datum_id"], "beam_i0": i0, "beam_transmission": trans}
        docs.append(("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0),
                                                 seq_num=seq, filled={IMAGE_KEY: False},
                                                 validate=False)))
    docs.append(("stop", bundle.compose_stop()))
    return bundle.start_doc["uid"], docs


def stream_run(md: dict, frames: list[tuple], folder: Path) -> tuple[str, list]:
    """Frames and NDAttribute I0/transmission in one HDF5 file (ophyd-async's layout)."""
    import h5py

    path = folder / f"stream_{time.monotonic_ns()}.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("/entry/data/data", data=np.stack([f[0] for f in frames]))
        attrs = fh.create_group("/entry/instrument/NDAttributes")
        attrs["i0"] = np.array([f[1] for f in frames])
        attrs["transmission"] = np.array([f[2] for f in frames])
    return stream_run_docs(md, f"file://localhost{path}", len(frames),
                           list(frames[0][0].shape),
                           attributes={"i0": "/entry/instrument/NDAttributes/i0",
                                       "transmission": "/entry/instrument/NDAttributes/"
                                                       "transmission"})


def analysis_runs(runs, raw_uid: str) -> list:
    """Every analysis run in the catalog for a raw run."""
    from tiled.queries import Key

    results = runs.search(Key("raw_uid") == raw_uid)
    found = []
    for uid in list(results):
        try:
            found.append(results[uid])
        except KeyError:  # listed, then deleted: a new coordinator is rewriting the run
            continue
    return found


def wait_for_analysis(runs, raw_uid: str, timeout: float = 120.0, *, diagnose=None):
    """The (single) analysis run of a raw run once its stop document is written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in analysis_runs(runs, raw_uid) if r.metadata.get("stop")]
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"no complete analysis run for {raw_uid} in {timeout:g} s"
                         + (f"\n{diagnose()}" if diagnose else ""))


def frame_table(run) -> dict[int, dict[str, Any]]:
    """raw_seq_num -> row of the pbi_anomaly stream."""
    table = run["pbi_anomaly"].read()
    cols = ["raw_seq_num", "status", "reason", "score", "threshold", "p_value",
            "hyperscore", "is_anomaly", "predicted_composition"]
    rows: dict[int, dict[str, Any]] = {}
    seqs = [int(s) for s in np.asarray(table["raw_seq_num"])]
    values = {c: list(np.asarray(table[c])) for c in cols}
    for i, seq in enumerate(seqs):
        rows.setdefault(seq, {"count": 0})
        rows[seq]["count"] += 1
        rows[seq].update({c: values[c][i] for c in cols})
    return rows
