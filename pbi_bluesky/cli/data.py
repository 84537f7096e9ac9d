"""``pbi simulate`` and ``pbi reduce``: labelled datasets and 2D -> 1D reduction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pbi_bluesky.cli.app import app


@app.command()
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
    from pbi_bluesky.datasets import generate_dataset
    from pbi_bluesky.simulate import PS_PMMA, Instrument, load_blend_system, make_geometry

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


@app.command()
def reduce(
    frames: Annotated[list[Path], typer.Argument(help="Image files (TIFF, EDF, CBF, HDF5).")],
    poni: Annotated[Path, typer.Option(help="pyFAI PONI geometry file.")],
    out: Annotated[Path, typer.Option(help="Output folder for profiles.")],
    mask: Annotated[Path | None, typer.Option(help="Mask image (non-zero = masked).")] = None,
    dark: Annotated[Path | None, typer.Option(help="Dark image.")] = None,
    flat: Annotated[Path | None, typer.Option(help="Flat-field image.")] = None,
    background: Annotated[Path | None, typer.Option(help="Empty-cell frame.")] = None,
    background_monitor: Annotated[float, typer.Option(help="Empty-cell monitor.")] = 1.0,
    background_transmission: Annotated[
        float, typer.Option(help="Empty-cell transmission.")
    ] = 1.0,
    monitor: Annotated[float, typer.Option(help="Monitor (I0) of every frame.")] = 1.0,
    transmission: Annotated[float, typer.Option(help="Sample transmission.")] = 1.0,
    thickness: Annotated[float | None, typer.Option(help="Sample thickness, cm.")] = None,
    npt: Annotated[int, typer.Option(help="Number of q bins.")] = 500,
    qmin: Annotated[float | None, typer.Option(help="Lowest q, 1/A.")] = None,
    qmax: Annotated[float | None, typer.Option(help="Highest q, 1/A.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="dat (3-column) or h5 (NXcanSAS).")] = "dat",
) -> None:
    """Reduce 2D frames to 1D I(q) profiles on one fixed q grid."""
    from pbi_bluesky.reduction import Reducer, ReductionError, write_ascii, write_nxcansas

    if fmt not in ("dat", "h5"):
        raise typer.BadParameter("--format must be 'dat' or 'h5'")
    q_range = (qmin, qmax) if qmin is not None and qmax is not None else None
    try:
        reducer = Reducer(poni, npt=npt, q_range_inv_angstrom=q_range, mask=mask, dark=dark,
                          flat=flat)
    except (ReductionError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for frame in frames:
        try:
            profile = reducer.reduce(
                frame, monitor=monitor, transmission=transmission, thickness_cm=thickness,
                background=background, background_monitor=background_monitor,
                background_transmission=background_transmission,
                metadata={"source": str(frame)},
            )
        except (ReductionError, OSError) as exc:
            failed += 1
            typer.echo(f"error: {frame}: {exc}", err=True)
            continue
        target = out / f"{frame.stem}.{fmt}"
        (write_ascii if fmt == "dat" else write_nxcansas)(profile, target)
        typer.echo(str(target))
    if failed:
        raise typer.Exit(1)
