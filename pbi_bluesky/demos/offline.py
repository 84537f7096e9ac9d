"""Offline demo: a simulated tray measured on a Pilatus 1M, reduced, and summarised.

This is what ``make demo`` runs until the live-scan demo lands: it renders 2D frames of
a tray of PS/PMMA specimens (normal ones and one of each anomaly kind, plus instrument
faults), reduces them with the fast pyFAI-based :class:`~pbi_bluesky.reduction.Reducer`,
fits simple physical descriptors and a reduced chi-square against each label's nominal
reference curve, and writes a PNG of the curves and a summary table (text + CSV).

The chi-square column is a plain physics check, not the anomaly model (that arrives with
:mod:`pbi_bluesky.models`); the summary says so.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import find_peaks

from pbi_bluesky.profile import Profile
from pbi_bluesky.reduction import read_profile
from pbi_bluesky.simulate import PS_PMMA, Instrument, intensity_inv_cm, nominal_state
from pbi_bluesky.training.datasets import generate_dataset, read_manifest

__all__ = ["DemoRow", "run_offline_demo"]

logger = logging.getLogger(__name__)


@dataclass
class DemoRow:
    """One line of the demo summary."""

    sample_id: str
    label: str
    truth: str
    severity: float
    peak_q_inv_angstrom: float
    domain_spacing_A: float
    invariant: float
    chi2_vs_reference: float

    def as_dict(self) -> dict[str, Any]:
        """Return the row's fields as a new dict."""
        return dict(self.__dict__)


def _descriptors(profile: Profile) -> tuple[float, float, float]:
    q, i = profile.q_inv_angstrom, profile.intensity
    ok = profile.valid
    q, i, sigma = q[ok], i[ok], profile.sigma[ok]
    invariant = float(np.trapezoid(q**2 * i, q))
    # strongest local maximum of the lightly smoothed curve: the correlation peak
    smooth = np.convolve(i, np.ones(5) / 5, mode="same")
    peaks, props = find_peaks(smooth[2:-2], prominence=8 * np.median(sigma) / np.sqrt(5))
    if peaks.size == 0:
        return float("nan"), float("nan"), invariant
    q_peak = float(q[2:-2][peaks[np.argmax(props["prominences"])]])
    return q_peak, 2 * np.pi / q_peak, invariant


def _chi2(profile: Profile, reference: np.ndarray) -> float:
    ok = profile.valid & (profile.sigma > 0)
    r = (profile.intensity[ok] - reference[ok]) / profile.sigma[ok]
    return float(np.mean(r**2))


def run_offline_demo(out_dir: str | Path, *, seed: int = 7, progress: bool = True) -> list[DemoRow]:
    """Simulate, reduce and summarise a small tray; returns the summary rows.

    Writes ``out_dir/tray`` (frames, profiles, manifest), ``out_dir/demo_curves.png`` and
    ``out_dir/demo_summary.csv``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    instrument = Instrument()
    t0 = time.perf_counter()
    manifest = generate_dataset(
        out / "tray",
        instrument=instrument,
        n_normal_per_recipe=2,
        n_per_anomaly_kind=1,
        n_per_fault=0,
        frames=True,
        seed=seed,
        progress=progress,
    )
    elapsed = time.perf_counter() - t0
    rows: list[DemoRow] = []
    q = instrument.q_centers_inv_angstrom
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for rec in read_manifest(manifest):
        profile = read_profile(rec["path"])
        reference = intensity_inv_cm(nominal_state(PS_PMMA, rec["composition"]), q)
        q_peak, spacing, invariant = _descriptors(profile)
        row = DemoRow(
            rec["sample_id"],
            rec["composition"],
            rec["kind"],
            float(rec["severity"]),
            q_peak,
            spacing,
            invariant,
            _chi2(profile, reference),
        )
        rows.append(row)
        anomalous = rec["kind"] != "normal"
        ax = axes[1] if anomalous else axes[0]
        label = f"{rec['composition']} {rec['kind']}" if anomalous else rec["composition"]
        ax.loglog(profile.q_inv_angstrom, np.clip(profile.intensity, 1e-3, None), lw=1,
                  label=label)
    for ax, title in zip(axes, ("normal specimens", "anomalous specimens"), strict=True):
        ax.set_xlabel("q (1/Å)")
        ax.set_ylabel("I(q) (1/cm)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle("pbi_bluesky offline demo: simulated PS/PMMA tray, Pilatus 1M, reduced I(q)")
    fig.tight_layout()
    fig.savefig(out / "demo_curves.png", dpi=110)
    plt.close(fig)
    with (out / "demo_summary.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].as_dict()))
        writer.writeheader()
        writer.writerows(r.as_dict() for r in rows)
    logger.info("rendered and reduced %d frames in %.1f s", len(rows), elapsed)
    return rows


def format_table(rows: list[DemoRow]) -> str:
    """Return the summary as a fixed-width text table."""
    head = f"{'sample':8} {'label':7} {'truth':18} {'sev':>5} {'q*(1/A)':>8} {'d(A)':>7} " \
           f"{'Q':>10} {'chi2/ref':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.sample_id:8} {r.label:7} {r.truth:18} {r.severity:5.2f} "
            f"{r.peak_q_inv_angstrom:8.4f} {r.domain_spacing_A:7.0f} {r.invariant:10.3e} "
            f"{r.chi2_vs_reference:9.1f}"
        )
    return "\n".join(lines)
