"""Labelled SAXS datasets from the simulator: 1D profiles and/or 2D frames plus a manifest.

A dataset folder holds ``manifest.csv`` (one row per measurement: ``path``,
``composition`` -- the recipe on the label -- and the simulated truth ``anomaly``,
``kind``, ``severity``, plus the beamline readings needed to reduce frames),
``geometry.poni``, and, with frames, ``mask.edf``, ``dark.edf`` and the empty-cell frame.
Profiles are 3-column ASCII (``q I sigma``, q in 1/A, I in 1/cm). Everything is seeded.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pbi_bluesky.profile import Profile
from pbi_bluesky.reduction import Reducer, absolute_monitor, write_ascii
from pbi_bluesky.simulate import (
    INSTRUMENT_FAULTS,
    PS_PMMA,
    BlendSystem,
    Instrument,
    applicable_anomalies,
    apply_anomaly,
    expected_dark,
    nominal_state,
    render_empty_cell,
    render_frame,
    simulate_profile,
)

__all__ = [
    "MANIFEST_COLUMNS",
    "SampleSpec",
    "plan_samples",
    "generate_dataset",
    "read_manifest",
    "absolute_monitor",
]

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "path",
    "composition",
    "anomaly",
    "kind",
    "severity",
    "sample_id",
    "true_composition",
    "frame",
    "monitor",
    "transmission",
    "thickness_cm",
    "exposure_s",
    "detail",
)


@dataclass(frozen=True)
class SampleSpec:
    """One planned measurement: recipe on the label, anomaly kind and severity."""

    sample_id: str
    recipe: str
    kind: str = "normal"
    severity: float = 0.0
    faults: dict[str, float] = field(default_factory=dict)


def plan_samples(
    system: BlendSystem,
    rng: np.random.Generator,
    *,
    n_normal_per_recipe: int = 20,
    n_per_anomaly_kind: int = 5,
    kinds: tuple[str, ...] | None = None,
    n_per_fault: int = 0,
) -> list[SampleSpec]:
    """Plan a tray/dataset: normals of every recipe, then each anomaly kind spread over recipes.

    Severities are drawn uniformly in [0, 1]. Instrument faults (``n_per_fault`` > 0) are
    put on otherwise normal specimens and only make sense for 2D frames.

    Parameters
    ----------
    system
        The blend system whose recipes are planned.
    rng
        Draws the severities.
    n_normal_per_recipe
        Normal specimens of every recipe.
    n_per_anomaly_kind
        Specimens of each anomaly kind, spread round-robin over the recipes it applies to.
    kinds
        Anomaly kinds to plan; default every kind that applies to some recipe.
    n_per_fault
        Specimens of each instrument fault (:data:`INSTRUMENT_FAULTS`).
    """
    specs: list[SampleSpec] = []
    for recipe in system.recipes:
        for _ in range(n_normal_per_recipe):
            specs.append(SampleSpec(f"s{len(specs):05d}", recipe))
    for kind in kinds if kinds is not None else _all_kinds(system):
        recipes = [r for r in system.recipes if kind in applicable_anomalies(r)]
        if not recipes:
            continue
        for i in range(n_per_anomaly_kind):
            recipe = recipes[i % len(recipes)]
            specs.append(SampleSpec(f"s{len(specs):05d}", recipe, kind, float(rng.uniform())))
    for fault in INSTRUMENT_FAULTS if n_per_fault > 0 else ():
        for i in range(n_per_fault):
            recipe = system.recipes[i % len(system.recipes)]
            severity = float(rng.uniform())
            specs.append(
                SampleSpec(f"s{len(specs):05d}", recipe, fault, severity, {fault: severity})
            )
    return specs


def _all_kinds(system: BlendSystem) -> tuple[str, ...]:
    kinds: list[str] = []
    for recipe in system.recipes:
        for kind in applicable_anomalies(recipe):
            if kind not in kinds:
                kinds.append(kind)
    return tuple(kinds)


def generate_dataset(
    out_dir: str | Path,
    *,
    system: BlendSystem = PS_PMMA,
    instrument: Instrument | None = None,
    n_normal_per_recipe: int = 20,
    n_per_anomaly_kind: int = 5,
    kinds: tuple[str, ...] | None = None,
    n_per_fault: int = 0,
    frames: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write a labelled dataset and return the path of its ``manifest.csv``.

    With ``frames=False`` each row is a simulated reduced profile. With ``frames=True``
    each measurement is rendered as a Pilatus-style CBF frame (int32, gaps = -1) and
    also reduced with :class:`~pbi_bluesky.reduction.Reducer` (mask, dark, solid angle,
    polarisation, monitor, transmission, empty cell, thickness) into a profile; ``path``
    then names the reduced profile and ``frame`` the raw image.

    Parameters
    ----------
    out_dir
        Folder to write (created if missing): ``manifest.csv``, ``geometry.poni``,
        ``profiles/`` and, with ``frames=True``, ``frames/``, ``mask.edf`` and ``dark.edf``.
    system
        The blend system to simulate.
    instrument
        Beamline model; default :class:`~pbi_bluesky.simulate.Instrument` ``()``.
    n_normal_per_recipe, n_per_anomaly_kind, kinds, n_per_fault
        What to measure, as for :func:`plan_samples`; instrument faults only with
        ``frames=True``.
    frames
        Render and reduce 2D frames instead of simulating profiles directly.
    seed
        Seed of the one generator behind the plan and every measurement.
    progress
        Show a progress bar (on a terminal only).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    instrument = instrument or Instrument()
    rng = np.random.default_rng(seed)
    specs = plan_samples(
        system,
        rng,
        n_normal_per_recipe=n_normal_per_recipe,
        n_per_anomaly_kind=n_per_anomaly_kind,
        kinds=kinds,
        n_per_fault=n_per_fault if frames else 0,
    )
    instrument.write_poni(out / "geometry.poni")
    (out / "profiles").mkdir(exist_ok=True)
    reducer = background = None
    if frames:
        reducer, background = _prepare_frames(out, instrument, rng)
    rows: list[dict[str, Any]] = []
    # a bar on a terminal only (redrawn at most once a second); a log file gets one line
    for spec in tqdm(specs, desc="simulating", unit="sample", mininterval=1.0,
                     disable=not (progress and sys.stderr.isatty())):
        row = _measure(spec, out, system, instrument, rng, reducer, background)
        rows.append(row)
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    logger.info("wrote %d measurements to %s", len(rows), manifest)
    return manifest


def _prepare_frames(
    out: Path, instrument: Instrument, rng: np.random.Generator
) -> tuple[Reducer, Profile]:
    import fabio

    (out / "frames").mkdir(exist_ok=True)
    fabio.edfimage.EdfImage(data=instrument.mask.astype(np.int8)).write(str(out / "mask.edf"))
    dark = expected_dark(instrument)
    fabio.edfimage.EdfImage(data=dark).write(str(out / "dark.edf"))
    reducer = Reducer(
        instrument.geometry,
        npt=instrument.npt,
        q_range_inv_angstrom=instrument.q_range_inv_angstrom,
        mask=instrument.mask,
        dark=dark,
        polarization_factor=instrument.polarization_factor,
    )
    cell = render_empty_cell(instrument, rng)
    fabio.cbfimage.CbfImage(data=cell.frame).write(str(out / "frames" / "empty_cell.cbf"))
    (out / "frames" / "empty_cell.json").write_text(
        json.dumps({"monitor": cell.monitor, "transmission": cell.transmission})
    )
    background = reducer.reduce_absolute(cell.frame, i0=cell.monitor,
                                         transmission=cell.transmission)
    return reducer, background


def _measure(
    spec: SampleSpec,
    out: Path,
    system: BlendSystem,
    instrument: Instrument,
    rng: np.random.Generator,
    reducer: Reducer | None,
    background: Profile | None,
) -> dict[str, Any]:
    state = nominal_state(system, spec.recipe, rng)
    if spec.kind != "normal" and spec.kind not in INSTRUMENT_FAULTS:
        state = apply_anomaly(state, spec.kind, spec.severity, rng)
    row: dict[str, Any] = {
        "composition": spec.recipe,
        "anomaly": int(spec.kind != "normal"),
        "kind": spec.kind,
        "severity": f"{spec.severity:.4f}",
        "sample_id": spec.sample_id,
        "true_composition": f"{100 * state.weight_fraction_a:.2f}",
        "thickness_cm": state.thickness_cm,
        "exposure_s": instrument.exposure_s,
        "detail": json.dumps(state.anomaly_params or spec.faults),
    }
    profile_path = out / "profiles" / f"{spec.sample_id}.dat"
    meta = {"sample_id": spec.sample_id, "composition": spec.recipe}
    if reducer is None:
        profile = simulate_profile(state, instrument, rng)
        row.update(frame="", monitor="", transmission=f"{state.transmission:.6f}")
    else:
        import fabio

        shot = render_frame(state, instrument, rng, faults=spec.faults)
        frame_path = out / "frames" / f"{spec.sample_id}.cbf"
        fabio.cbfimage.CbfImage(data=shot.frame).write(str(frame_path))
        profile = reducer.reduce_absolute(
            shot.frame,
            i0=shot.monitor,
            transmission=shot.transmission,
            thickness_cm=state.thickness_cm,
            background=background,
        )
        row.update(
            frame=str(frame_path.relative_to(out)),
            monitor=f"{shot.monitor:.6e}",
            transmission=f"{shot.transmission:.6f}",
        )
    write_ascii(profile.with_metadata(**meta), profile_path)
    row["path"] = str(profile_path.relative_to(out))
    return row


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """Rows of a manifest; ``path`` (and ``frame``) resolved against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"manifest {path} has no rows")
    missing = {"path", "composition"} - set(rows[0])
    if missing:
        raise ValueError(f"manifest {path} lacks column(s): {', '.join(sorted(missing))}")
    for row in rows:
        for key in ("path", "frame"):
            if row.get(key):
                row[key] = str((path.parent / row[key]).resolve())
    return rows


def _float(row: dict[str, str], key: str) -> float | None:
    value = row.get(key, "")
    return float(value) if value not in ("", None) else None


def load_profiles(
    rows: list[dict[str, str]],
    *,
    poni: str | Path | None = None,
    mask: str | Path | None = None,
    dark: str | Path | None = None,
    background: Profile | None = None,
) -> list[Profile | Exception]:
    """Load the ``path`` of every manifest row as a profile (or the reason it failed).

    Without ``poni`` each path is a 1D profile file (3-column ASCII or NXcanSAS). With
    ``poni`` each row's ``frame`` (or, without one, its ``path``) is a 2D frame reduced on
    that geometry by
    :meth:`~pbi_bluesky.reduction.Reducer.reduce_absolute` (the one absolute path, with
    the scale factor stored beside the PONI when there is one) from the manifest columns
    ``monitor`` (the I0 reading), ``transmission`` and ``thickness_cm``; a row without a
    monitor is reduced without absolute normalisation (units "arbitrary").
    ``background`` is an empty-cell profile made by ``reduce_absolute``.
    """
    from pbi_bluesky.reduction import ReductionError, read_profile

    reducer = None
    if poni is not None:
        reducer = Reducer(poni, mask=mask, dark=dark)
    out: list[Profile | Exception] = []
    for row in rows:
        try:
            if reducer is None:
                out.append(read_profile(row["path"]))
                continue
            image = row.get("frame") or row["path"]
            monitor = _float(row, "monitor")
            transmission = _float(row, "transmission") or 1.0
            if monitor:
                out.append(reducer.reduce_absolute(
                    image, i0=monitor, transmission=transmission,
                    thickness_cm=_float(row, "thickness_cm"), background=background))
            else:
                out.append(reducer.reduce(image, transmission=transmission,
                                          thickness_cm=_float(row, "thickness_cm")))
        except (ReductionError, OSError, ValueError) as exc:
            out.append(exc)
    return out
