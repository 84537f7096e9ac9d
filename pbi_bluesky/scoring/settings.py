"""From a beamline's settings (``beamline.yaml``) to the arguments of a frame scorer.

:func:`settings_kwargs` is the one place that knows which settings a
:class:`~pbi_bluesky.scoring.engine.FrameScorer` takes and how a device mode names the
image key; :meth:`FrameScorer.from_settings
<pbi_bluesky.scoring.engine.FrameScorer.from_settings>`, the live scorer and the CLI
build their scorers through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pbi_bluesky.config import BeamlineConfig, load_config

__all__ = ["settings_kwargs"]


def settings_kwargs(settings: BeamlineConfig | str | Path, *, mode: str | None = None
                    ) -> dict[str, Any]:
    """Return :class:`~pbi_bluesky.scoring.engine.FrameScorer` keyword arguments.

    Parameters
    ----------
    settings
        A :class:`~pbi_bluesky.config.BeamlineConfig` or the path of a ``beamline.yaml``.
    mode
        ``"ophyd"`` or ``"async"`` (default: the settings' ``device_api``): the image key
        is the one the devices of that mode produce.

    Returns
    -------
    dict
        The model, the data keys, geometry, mask, dark, flat, polarisation, absolute
        scale, data roots, q bins and model registry.

    Raises
    ------
    ValueError
        ``mode`` is neither ``"ophyd"`` nor ``"async"``.
    """
    cfg = settings if isinstance(settings, BeamlineConfig) else load_config(settings)
    mode = mode or cfg.device_api
    if mode not in ("ophyd", "async"):
        raise ValueError(f"mode must be 'ophyd' or 'async', got {mode!r}")
    name = cfg.detector.name
    g = cfg.geometry
    return {
        "model": cfg.scorer.model,
        "image_key": f"{name}_image" if mode == "ophyd" else name,
        "monitor_key": cfg.monitors.i0_name,
        "transmission_key": cfg.monitors.transmission_name
        if cfg.monitors.transmission else None,
        "transmission_required": bool(cfg.monitors.transmission),
        "poni": g.poni, "mask": g.mask, "dark": g.dark, "flat": g.flat,
        "polarization_factor": g.polarization_factor,
        "absolute_scale": g.absolute_scale,
        "data_roots": cfg.data_roots, "npt": cfg.scorer.npt,
        "registry": cfg.scorer.registry,
    }
