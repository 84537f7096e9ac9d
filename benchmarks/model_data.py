"""Data for the model benchmarks: two simulated physics families and one real measurement.

* :func:`blends` -- PS/PMMA blends (:mod:`pbi_bluesky.simulate`), the family the training
  negatives were modelled on.
* :func:`filled` -- filled semicrystalline PE (:mod:`pbi_bluesky.simulate.semicrystalline`),
  written independently, with anomaly kinds no training transform copies; radiation damage
  comes as series of repeated frames of one specimen.
* :func:`molass_sec_saxs` -- real, measured SEC-SAXS frames (molass-data, GPL-3, fetched with
  pip at benchmark time into a cache outside the repository, never vendored), labelled by
  the independent UV absorbance trace recorded with them.

Every function returns resampled arrays plus labels; all simulations are seeded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from pbi_bluesky.models import QGrid
from pbi_bluesky.profile import Profile
from pbi_bluesky.simulate import (
    PS_PMMA,
    SAMPLE_ANOMALIES,
    Instrument,
    applicable_anomalies,
    apply_anomaly,
    nominal_state,
    simulate_profile,
)
from pbi_bluesky.simulate.semicrystalline import (
    FILLED_ANOMALIES,
    FILLED_PE,
    apply_filled_anomaly,
    damage_series,
    nominal_filled_state,
)

__all__ = ["blends", "faint", "filled", "molass_sec_saxs", "short_exposure", "LOKO_NEGATIVE"]

LOKO_NEGATIVE = {
    # simulated anomaly kind -> the synthetic training negative that mirrors it
    "thickness_error": "scale",
    "contamination": "upturn",
    "coarsening": "shift",
    "degradation": "broaden",
    "composition_drift": "drift",
    "mislabelled": "wrong_recipe",
}


def _pack(rows, grid: QGrid):
    pairs = [grid.resample(p) for p, *_ in rows]
    return {"intensity": np.array([a for a, _ in pairs]),
            "sigma": np.array([b for _, b in pairs]),
            "recipes": [r[1] for r in rows], "labels": np.array([r[2] for r in rows]),
            "kinds": np.array([r[3] for r in rows]), "profiles": [r[0] for r in rows],
            "extra": [r[4] if len(r) > 4 else {} for r in rows]}


def blends(seed: int, n_normal: int = 200, n_anomaly: int = 50, grid: QGrid | None = None):
    """PS/PMMA: ``n_normal`` normals per recipe, ``n_anomaly`` anomalies per kind."""
    rng = np.random.default_rng(seed)
    instrument = Instrument()
    rows = []
    for recipe in PS_PMMA.recipes:
        for _ in range(n_normal):
            rows.append((simulate_profile(nominal_state(PS_PMMA, recipe, rng), instrument, rng),
                         recipe, 0, "normal"))
    for kind in SAMPLE_ANOMALIES if n_anomaly else ():
        recipes = [r for r in PS_PMMA.recipes if kind in applicable_anomalies(r)]
        for i in range(n_anomaly):
            recipe = recipes[i % len(recipes)]
            state = apply_anomaly(nominal_state(PS_PMMA, recipe, rng), kind, rng.uniform(), rng)
            rows.append((simulate_profile(state, instrument, rng), recipe, 1, kind,
                         {"severity": state.severity}))
    return _pack(rows, grid or QGrid())


def faint(seed: int, n_per_kind: int = 100, grid: QGrid | None = None):
    """PS/PMMA anomalies fainter than the catalogue's: a low-q upturn of 3-30 % of the clean
    curve at q = 0.007 1/A (the catalogue starts at 30 %) and a composition drift of 1-4 wt%
    (it starts at 4), ``n_per_kind`` of each over the recipes; no normals (score them with a
    model trained on :func:`blends`)."""
    from dataclasses import replace

    from pbi_bluesky.simulate.recipes import parse_recipe

    rng = np.random.default_rng(20_000 + seed)
    instrument = Instrument()
    rows = []
    for i in range(n_per_kind):
        recipe = PS_PMMA.recipes[i % len(PS_PMMA.recipes)]
        state = apply_anomaly(nominal_state(PS_PMMA, recipe, rng), "contamination", 0.0, rng)
        state = replace(state, contamination_ratio=float(rng.uniform(0.03, 0.3)),
                        kind="faint_upturn")
        rows.append((simulate_profile(state, instrument, rng), recipe, 1, "faint_upturn",
                     {"ratio": state.contamination_ratio}))
    for i in range(n_per_kind):
        recipe = PS_PMMA.recipes[i % len(PS_PMMA.recipes)]
        base = nominal_state(PS_PMMA, recipe, rng)
        w0 = parse_recipe(recipe)
        sign = 1.0 if w0 <= 0 else -1.0 if w0 >= 1 else float(rng.choice([-1.0, 1.0]))
        w = float(np.clip(w0 + sign * rng.uniform(0.01, 0.04), 0.0, 1.0))
        d, xi = PS_PMMA.structure_at(w)
        d0, xi0 = PS_PMMA.structure_at(w0)
        state = replace(base, weight_fraction_a=w, domain_spacing_A=base.domain_spacing_A * d / d0,
                        correlation_length_A=base.correlation_length_A * xi / xi0,
                        kind="small_drift")
        rows.append((simulate_profile(state, instrument, rng), recipe, 1, "small_drift",
                     {"delta_wt": 100 * (w - w0)}))
    return _pack(rows, grid or QGrid())


def short_exposure(seed: int, n_per_recipe: int = 100, exposure_s: float = 0.25,
                   grid: QGrid | None = None):
    """Normal PS/PMMA specimens measured 4x shorter than the training normals (twice the
    relative noise): not anomalies, so a detector that uses each curve's sigma should flag
    them at about alpha."""
    rng = np.random.default_rng(30_000 + seed)
    instrument = Instrument()
    rows = [(simulate_profile(nominal_state(PS_PMMA, recipe, rng), instrument, rng,
                              exposure_s=exposure_s), recipe, 0, "normal_short_exposure")
            for recipe in PS_PMMA.recipes for _ in range(n_per_recipe)]
    return _pack(rows, grid or QGrid())


def filled(seed: int, n_normal: int = 200, n_anomaly: int = 50, series_frames: int = 6,
           grid: QGrid | None = None):
    """Filled PE: ``n_normal`` normals per recipe; ``n_anomaly`` anomalies per kind (for
    radiation damage: ``n_anomaly // (series_frames - 1)`` series of ``series_frames``
    repeated frames, frame 0 undamaged and left out, the others anomalous)."""
    rng = np.random.default_rng(10_000 + seed)
    instrument = Instrument()
    recipes = list(FILLED_PE.recipes)
    rows = []
    for recipe in recipes:
        for _ in range(n_normal):
            state = nominal_filled_state(FILLED_PE, recipe, rng)
            rows.append((simulate_profile(state, instrument, rng), recipe, 0, "normal"))
    for kind in FILLED_ANOMALIES if n_anomaly else ():
        if kind == "radiation_damage":
            for i in range(max(n_anomaly // (series_frames - 1), 1)):
                recipe = recipes[i % len(recipes)]
                severity = float(rng.uniform())
                series = damage_series(nominal_filled_state(FILLED_PE, recipe, rng), severity,
                                       series_frames)
                for k, state in enumerate(series[1:], start=1):
                    rows.append((simulate_profile(state, instrument, rng), recipe, 1, kind,
                                 {"severity": severity, "frame": k}))
            continue
        for i in range(n_anomaly):
            recipe = recipes[i % len(recipes)]
            state = apply_filled_anomaly(nominal_filled_state(FILLED_PE, recipe, rng), kind,
                                         float(rng.uniform()), rng)
            rows.append((simulate_profile(state, instrument, rng), recipe, 1, kind,
                         {"severity": state.severity}))
    return _pack(rows, grid or QGrid())


MOLASS = ("molass-data", "0.5.0")
MOLASS_SAMPLE = "SAMPLE2"


def _molass_files(cache: Path) -> Path:
    """Download the molass-data wheel with pip (once) and unpack SAMPLE2 into ``cache``."""
    target = cache / "molass_data" / MOLASS_SAMPLE
    if target.is_dir() and any(target.glob("*.dat")):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("molass_data-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "-d", str(cache), f"{MOLASS[0]}=={MOLASS[1]}"], check=True,
                       timeout=600)
        wheels = list(cache.glob("molass_data-*.whl"))
    with zipfile.ZipFile(wheels[0]) as whl:
        for name in whl.namelist():
            if name.startswith(f"molass_data/{MOLASS_SAMPLE}/") or name.endswith("LICENSE.txt"):
                whl.extract(name, cache)
    return target


def molass_sec_saxs(cache: str | Path | None = None, grid: QGrid | None = None,
                    normal_below: float = 0.01, anomaly_above: float = 0.05,
                    train_share: float = 2 / 3):
    """Real SEC-SAXS frames of one run (molass-data SAMPLE2: 1000 buffer-subtracted frames
    with a UV absorbance trace at the same 1000 time points).

    Labels come from UV absorbance at 280 nm, not from the X-ray data: a frame is normal
    (buffer only) when UV is below ``normal_below`` of the elution peak above baseline,
    anomalous (protein in the beam) above ``anomaly_above``; frames in between are left
    out. Training normals are the first ``train_share`` of the normal frames in time (as a
    user trains on the start of a run), test normals the rest.

    Returns None (and the reason) when the data cannot be fetched.
    """
    cache = Path(cache or os.environ.get("PBI_BENCH_CACHE",
                                         Path.home() / ".cache" / "pbi_bluesky" / "bench"))
    try:
        folder = _molass_files(cache)
    except (subprocess.SubprocessError, OSError, zipfile.BadZipFile) as exc:
        return None, f"molass-data could not be fetched: {exc}"
    files = sorted(folder.glob(f"PREFIX{MOLASS_SAMPLE[-1]}_0*.dat"))
    uv = np.loadtxt(folder / f"PREFIX{MOLASS_SAMPLE[-1]}_UV.txt", skiprows=2)
    trace = uv[np.argmin(np.abs(uv[:, 0] - 280.0)), 1:]
    if len(trace) != len(files):
        return None, f"UV trace has {len(trace)} points for {len(files)} frames"
    baseline = float(np.median(trace[: len(trace) // 5]))
    level = (trace - baseline) / (trace.max() - baseline)
    grid = grid or QGrid()
    rows, kept = [], []
    for i, path in enumerate(files):
        if normal_below <= level[i] < anomaly_above or (level[i] < 0 and -level[i] >= normal_below):
            continue  # between the two classes (or a UV baseline dip): left out
        data = np.loadtxt(path)
        rows.append((Profile(data[:, 0], data[:, 1], data[:, 2]), "buffer",
                     int(level[i] >= anomaly_above),
                     "protein" if level[i] >= anomaly_above else "normal",
                     {"frame": i, "uv_fraction": float(level[i])}))
        kept.append(i)
    out = _pack(rows, grid)
    normal = np.nonzero(out["labels"] == 0)[0]
    n_train = int(round(train_share * len(normal)))
    out["train"] = normal[:n_train]
    out["test"] = np.sort(np.r_[normal[n_train:], np.nonzero(out["labels"] == 1)[0]])
    out["what"] = (f"molass-data {MOLASS[1]} {MOLASS_SAMPLE} (GPL-3, fetched at benchmark time): "
                   f"{len(files)} measured buffer-subtracted SEC-SAXS frames; normal = UV280 < "
                   f"{100 * normal_below:g} % of the elution peak, anomaly = UV280 >= "
                   f"{100 * anomaly_above:g} % (protein eluting); training = the first "
                   f"{n_train} normal frames in time, test = the other "
                   f"{len(normal) - n_train} normals + {int(out['labels'].sum())} anomalies")
    return out, ""
