"""``pbi simulate``, ``pbi reduce`` and ``pbi calibrate-absolute``.

Labelled datasets, 2D -> 1D reduction, and the absolute-intensity scale factor from a
measured standard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pbi_bluesky.cli.app import command, data_app


@command(data_app, "simulate", old="simulate")
def simulate(
    out: Annotated[Path, typer.Option(help="Output folder for the dataset.")],
    normals: Annotated[int, typer.Option(help="Normal specimens per recipe.")] = 20,
    anomalies: Annotated[int, typer.Option(help="Anomalous specimens per anomaly kind.")] = 5,
    faults: Annotated[int, typer.Option(help="Frames per instrument fault (with --frames).")] = 0,
    frames: Annotated[bool, typer.Option(help="Render 2D CBF frames and reduce them.")] = False,
    kinds: Annotated[
        str | None, typer.Option(help="Comma-separated anomaly kinds (default: all).")
    ] = None,
    blend: Annotated[
        Path | None, typer.Option(help="YAML/JSON blend system (default: PS/PMMA).")
    ] = None,
    detector: Annotated[str, typer.Option(help="pyFAI detector name.")] = "Pilatus1M",
    distance: Annotated[float, typer.Option(help="Sample-detector distance, m.")] = 3.0,
    flux: Annotated[float, typer.Option(help="Incident flux, photons/s.")] = 1e12,
    exposure: Annotated[float, typer.Option(help="Exposure time, s.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed (datasets are reproducible).")] = 0,
) -> None:
    """Write a labelled simulated dataset: profiles (and frames), manifest.csv, PONI."""
    from pbi_bluesky.simulate import PS_PMMA, Instrument, load_blend_system, make_geometry
    from pbi_bluesky.training.datasets import generate_dataset

    system = load_blend_system(blend) if blend else PS_PMMA
    instrument = Instrument(
        geometry=make_geometry(detector, distance), flux_ph_per_s=flux, exposure_s=exposure
    )
    manifest = generate_dataset(
        out,
        system=system,
        instrument=instrument,
        n_normal_per_recipe=normals,
        n_per_anomaly_kind=anomalies,
        kinds=tuple(k.strip() for k in kinds.split(",")) if kinds else None,
        n_per_fault=faults,
        frames=frames,
        seed=seed,
    )
    typer.echo(str(manifest))


@command(data_app, "reduce", old="reduce")
def reduce(
    frames: Annotated[list[Path], typer.Argument(help="Image files (TIFF, EDF, CBF, HDF5).")],
    poni: Annotated[Path, typer.Option(help="pyFAI PONI geometry file.")],
    out: Annotated[Path, typer.Option(help="Output folder for profiles.")],
    mask: Annotated[Path | None, typer.Option(help="Mask image (non-zero = masked).")] = None,
    dark: Annotated[Path | None, typer.Option(help="Dark image.")] = None,
    flat: Annotated[Path | None, typer.Option(help="Flat-field image.")] = None,
    background: Annotated[Path | None, typer.Option(help="Empty-cell frame.")] = None,
    background_i0: Annotated[float | None, typer.Option(
        "--background-i0", "--background-monitor",
        help="I0 (incident-flux monitor reading) of the empty-cell frame.")] = None,
    background_transmission: Annotated[
        float, typer.Option(help="Empty-cell transmission.")
    ] = 1.0,
    i0: Annotated[float | None, typer.Option(
        "--i0", "--monitor",
        help="I0 (incident-flux monitor reading) of every frame. With it the output is "
             "absolute (1/cm with --thickness): I0, pixel solid angle, transmission, "
             "thickness and the absolute scale factor beside the PONI are applied.")] = None,
    transmission: Annotated[float, typer.Option(help="Sample transmission.")] = 1.0,
    thickness: Annotated[float | None, typer.Option(help="Sample thickness, cm.")] = None,
    absolute_scale: Annotated[Path | None, typer.Option(
        help="Absolute scale file (default: the one beside the PONI, if any).")] = None,
    npt: Annotated[int, typer.Option(help="Number of q bins.")] = 500,
    qmin: Annotated[float | None, typer.Option(help="Lowest q, 1/A.")] = None,
    qmax: Annotated[float | None, typer.Option(help="Highest q, 1/A.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="dat (3-column) or h5 (NXcanSAS).")] = "dat",
) -> None:
    """Reduce 2D frames to 1D I(q) profiles on one fixed q grid."""
    from pbi_bluesky.reduction import Reducer, ReductionError, write_ascii, write_nxcansas

    if fmt not in ("dat", "h5"):
        raise typer.BadParameter("--format must be 'dat' or 'h5'")
    if i0 is None and (background_i0 is not None or thickness is not None):
        typer.echo("note: without --i0 the output is normalised by nothing and labelled "
                   "'arbitrary' units, not 1/cm", err=True)
    q_range = (qmin, qmax) if qmin is not None and qmax is not None else None
    try:
        reducer = Reducer(poni, npt=npt, q_range_inv_angstrom=q_range, mask=mask, dark=dark,
                          flat=flat, absolute_scale=absolute_scale or "auto")
    except (ReductionError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if i0 is not None:
        scale = reducer.absolute_scale
        typer.echo(f"absolute scale factor {scale.factor:.6g}"
                   + (f" +- {scale.uncertainty:.2g} ({scale.standard}, {scale.source})"
                      if scale.calibrated else " (uncalibrated: no scale file beside the "
                      "PONI; run pbi calibrate-absolute)"), err=True)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for frame in frames:
        try:
            meta = {"source": str(frame)}
            if i0 is not None:
                profile = reducer.reduce_absolute(
                    frame, i0=i0, transmission=transmission, thickness_cm=thickness,
                    background=background, background_i0=background_i0,
                    background_transmission=background_transmission, metadata=meta)
            else:
                profile = reducer.reduce(
                    frame, transmission=transmission, thickness_cm=thickness,
                    background=background, background_monitor=background_i0 or 1.0,
                    background_transmission=background_transmission, metadata=meta)
        except (ReductionError, OSError) as exc:
            failed += 1
            typer.echo(f"error: {frame}: {exc}", err=True)
            continue
        target = out / f"{frame.stem}.{fmt}"
        (write_ascii if fmt == "dat" else write_nxcansas)(profile, target)
        typer.echo(str(target))
    if failed:
        raise typer.Exit(1)


@command(data_app, "calibrate-absolute", old="calibrate-absolute")
def calibrate_absolute(
    frames: Annotated[list[Path], typer.Argument(help="Frames of the standard (water).")],
    poni: Annotated[Path, typer.Option(help="pyFAI PONI geometry file.")],
    i0: Annotated[list[float], typer.Option(
        help="I0 of the water frames (once for all, or once per frame).")],
    transmission: Annotated[list[float], typer.Option(
        help="Measured transmission of the filled cell (once for all, or per frame).")],
    thickness: Annotated[float, typer.Option(help="Water path length (cell), cm.")],
    empty_cell: Annotated[Path, typer.Option(help="The same cell, empty.")],
    empty_cell_i0: Annotated[float, typer.Option(help="I0 of the empty-cell frame.")],
    empty_cell_transmission: Annotated[float, typer.Option(
        help="Transmission of the empty cell.")],
    mask: Annotated[Path | None, typer.Option(help="Mask image (non-zero = masked).")] = None,
    dark: Annotated[Path | None, typer.Option(help="Dark image.")] = None,
    flat: Annotated[Path | None, typer.Option(help="Flat-field image.")] = None,
    standard: Annotated[str, typer.Option(help="The standard: water.")] = "water",
    reference: Annotated[float | None, typer.Option(
        help="dSigma/dOmega of the standard, 1/cm (default: water at 20 C, 0.01632).")] = None,
    reference_uncertainty: Annotated[float, typer.Option(
        help="1-sigma uncertainty of the reference, 1/cm.")] = 0.0,
    temperature: Annotated[float, typer.Option(help="Temperature of the water, C.")] = 20.0,
    qmin: Annotated[float | None, typer.Option(help="Lowest q of the flat level, 1/A.")] = None,
    qmax: Annotated[float | None, typer.Option(help="Highest q of the flat level, 1/A.")] = None,
    npt: Annotated[int, typer.Option(help="Number of q bins.")] = 500,
    out: Annotated[Path | None, typer.Option(
        help="Scale file to write (default: beside the PONI, <stem>.absolute.json).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing scale file.")] = False,
) -> None:
    """Compute the absolute-intensity scale factor from a measured standard (water).

    It is stored beside the PONI; `pbi reduce`, training, scoring and the live
    scorer apply it from then on.
    """
    from pbi_bluesky.reduction import (
        WATER_INV_CM_20C,
        Reducer,
        ReductionError,
        absolute_scale_path,
        calibrate_with_water,
        save_absolute_scale,
    )

    if standard != "water":
        typer.echo(f"error: standard {standard!r} is not supported: water only (glassy "
                   "carbon needs its certified reference curve, which is not shipped)",
                   err=True)
        raise typer.Exit(2)
    if reference is None:
        if abs(temperature - 20.0) > 0.5:
            typer.echo("error: water's 0.01632 1/cm is its value at 20 C; at "
                       f"{temperature:g} C give --reference (1/cm) for that temperature",
                       err=True)
            raise typer.Exit(2)
        reference = WATER_INV_CM_20C
    target = out or absolute_scale_path(poni)
    if target.exists() and not force:
        typer.echo(f"error: {target} exists (use --force to replace it)", err=True)
        raise typer.Exit(2)
    try:
        reducer = Reducer(poni, npt=npt, mask=mask, dark=dark, flat=flat,
                          absolute_scale=None)
        q_range = (qmin, qmax) if qmin is not None and qmax is not None else None
        scale = calibrate_with_water(
            reducer, [str(f) for f in frames], i0=i0, transmission=transmission,
            thickness_cm=thickness, empty_cell=str(empty_cell), empty_cell_i0=empty_cell_i0,
            empty_cell_transmission=empty_cell_transmission, reference_inv_cm=reference,
            reference_uncertainty=reference_uncertainty, temperature_c=temperature,
            q_range=q_range)
    except (ReductionError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    save_absolute_scale(scale, target, poni=poni)
    d = scale.details
    typer.echo(f"absolute scale factor {scale.factor:.5g} +- {scale.uncertainty:.2g} "
               f"({100 * scale.uncertainty / scale.factor:.2f} %) from {standard} at "
               f"{temperature:g} C ({reference:g} 1/cm), {thickness:g} cm, {d['n_frames']} "
               f"frame(s); nominal level {d['nominal_level_inv_cm']:.5g} 1/cm over q = "
               f"{d['q_range_inv_angstrom'][0]:.4g}..{d['q_range_inv_angstrom'][1]:.4g} 1/A "
               f"({d['n_bins']} bins, reduced chi2 about flat {d['reduced_chi2_flat']:.2f}, "
               f"change over the range {100 * d['relative_change_over_q_range']:+.1f} %)")
    typer.echo(f"wrote {target}")
