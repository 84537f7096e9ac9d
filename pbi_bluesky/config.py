"""One file describes a beamline: ``beamline.yaml``.

The same file drives the IPython profile, the queue server's startup code, the live scorer
(:meth:`pbi_bluesky.live.LiveScorer.from_config`), the demo and the agent. It names PVs and
files, never a secret (the Tiled API key comes from the environment variable the file names).

``PBI_BEAMLINE_CONFIG`` selects the file (:func:`config_path`); relative paths inside it are
relative to the file's folder; ``~`` and ``$VARS`` are expanded. Unknown keys are an error
(a typo must not silently fall back to a default).

Example (the simulated beamline; ``profiles/profile_saxs/beamline.yaml``)::

    name: pbi-sim
    detector:
      prefix: "SAXS:"          # areaDetector IOC prefix (cam1:, image1:, HDF1: below it)
      write_path: /tmp/pbi_sim_data
    changer: {motor: "SAXS:changer"}
    monitors: {i0: "SAXS:mon:I0", transmission: "SAXS:mon:Transmission"}
    geometry: {poni: sim_pilatus1m.poni, mask: sim_pilatus1m_mask.edf.gz}
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "BeamlineConfig",
    "ChangerConfig",
    "ConfigError",
    "DetectorConfig",
    "GeometryConfig",
    "MonitorConfig",
    "ScorerConfig",
    "TiledConfig",
    "config_path",
    "load_config",
]

ENV_VAR = "PBI_BEAMLINE_CONFIG"


class ConfigError(ValueError):
    """The beamline configuration is missing, malformed or inconsistent; the message says
    which file and which key."""


@dataclass(frozen=True)
class DetectorConfig:
    """An areaDetector IOC: driver, image and HDF5 plugins.

    Parameters
    ----------
    prefix
        IOC prefix, e.g. ``"XF:12ID2-ES{Det:1M}"``.
    cam, image, hdf
        Plugin suffixes (areaDetector defaults ``cam1:``, ``image1:``, ``HDF1:``).
    kind
        Driver family: ``"pilatus"`` (ADPilatus).
    name
        Device name (data keys start with it: ``saxs_image``).
    write_path
        Folder the IOC writes HDF5 files into, as the IOC sees it.
    read_path
        The same folder as this machine sees it (default ``write_path``).
    timeout_margin_s
        A frame may take its exposure plus this long.
    """

    prefix: str
    cam: str = "cam1:"
    image: str | None = "image1:"
    hdf: str = "HDF1:"
    kind: str = "pilatus"
    name: str = "saxs"
    write_path: str = "/tmp/pbi_data"
    read_path: str | None = None
    timeout_margin_s: float = 3.0

    @property
    def local_path(self) -> str:
        """Where this machine reads the detector's files."""
        return self.read_path or self.write_path


@dataclass(frozen=True)
class ChangerConfig:
    """The sample changer: a motor record whose positions are slot numbers."""

    motor: str
    name: str = "changer"


@dataclass(frozen=True)
class MonitorConfig:
    """Incident-flux (I0) and transmission readings: plain analog PVs (scaler channel,
    electrometer, calculated transmission)."""

    i0: str
    transmission: str | None = None
    i0_name: str = "i0"
    transmission_name: str = "transmission"


@dataclass(frozen=True)
class GeometryConfig:
    """Files that describe the detector geometry and its corrections.

    Parameters
    ----------
    poni
        pyFAI PONI file (the product of a ``pyFAI-calib2`` session). Required.
    mask
        Mask image (fabio-readable or ``.npy``; non-zero = masked), e.g. from
        ``pyFAI-drawmask``.
    dark, flat
        Optional dark-current and flat-field images.
    polarization_factor
        pyFAI polarisation factor (0.99 for a horizontally polarised synchrotron beam).
    absolute_scale
        Scale-factor file written by ``pbi calibrate-absolute`` (optional).
    """

    poni: str
    mask: str | None = None
    dark: str | None = None
    flat: str | None = None
    polarization_factor: float = 0.99
    absolute_scale: str | None = None

    def poni_text(self) -> str:
        """The PONI file's text (raises :class:`ConfigError` if it cannot be read)."""
        try:
            return Path(self.poni).read_text()
        except OSError as exc:
            raise ConfigError(f"geometry.poni: cannot read {self.poni}: {exc}") from exc


@dataclass(frozen=True)
class TiledConfig:
    """Where runs are written: a Tiled server, or the embedded catalog when ``uri`` is
    null. The API key is read from the environment variable ``api_key_env``."""

    uri: str | None = None
    api_key_env: str = "PBI_TILED_API_KEY"

    @property
    def api_key(self) -> str | None:
        """The key from the environment (never stored in, or logged from, the file)."""
        return os.environ.get(self.api_key_env) or None


@dataclass(frozen=True)
class ScorerConfig:
    """Live-scorer settings (see :class:`pbi_bluesky.live.LiveScorer`)."""

    model: str | None = None
    queue_size: int = 64
    overflow: str = "block"
    put_timeout_s: float = 0.5
    npt: int = 400
    data_roots: tuple[str, ...] = ()


@dataclass(frozen=True)
class BeamlineConfig:
    """Everything that makes a beamline (see the module docstring)."""

    detector: DetectorConfig
    changer: ChangerConfig
    monitors: MonitorConfig
    geometry: GeometryConfig
    name: str = "pbi"
    device_api: str = "ophyd"
    tray: str | None = None
    tiled: TiledConfig = field(default_factory=TiledConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    data_dir: str | None = None
    default_exposure_s: float = 1.0
    connection_timeout_s: float = 5.0
    plots: bool = True
    source: str = "<memory>"

    @property
    def image_key(self) -> str:
        """Data key of the detector's frames in event descriptors."""
        return f"{self.detector.name}_image"

    @property
    def data_roots(self) -> tuple[str, ...]:
        """Folders the live scorer may read frames from (the detector's read path, plus any
        configured under ``scorer.data_roots``)."""
        return (self.detector.local_path, *self.scorer.data_roots)

    def public(self) -> dict[str, Any]:
        """Plain data safe to log or to record in a start document (no secrets: the API
        key is never part of the configuration)."""
        out = dataclasses.asdict(self)
        out["tiled"] = {"uri": self.tiled.uri, "api_key_env": self.tiled.api_key_env,
                        "api_key_set": self.tiled.api_key is not None}
        return out

    def to_yaml(self, path: str | Path) -> Path:
        """Write this configuration as a ``beamline.yaml`` (absolute paths)."""
        import yaml

        data = dataclasses.asdict(self)
        data.pop("source", None)
        data["scorer"]["data_roots"] = list(data["scorer"]["data_roots"])
        path = Path(path)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def with_overrides(self, **sections: dict[str, Any]) -> BeamlineConfig:
        """A copy with some fields of some sections replaced, e.g.
        ``cfg.with_overrides(detector={"prefix": "P:"})``."""
        changes: dict[str, Any] = {}
        for name, values in sections.items():
            current = getattr(self, name)
            if dataclasses.is_dataclass(current):
                changes[name] = dataclasses.replace(current, **values)
            else:
                changes[name] = values
        return dataclasses.replace(self, **changes)


_SECTIONS = {
    "detector": DetectorConfig, "changer": ChangerConfig, "monitors": MonitorConfig,
    "geometry": GeometryConfig, "tiled": TiledConfig, "scorer": ScorerConfig,
}
_PATH_KEYS = {
    "geometry": ("poni", "mask", "dark", "flat", "absolute_scale"),
    None: ("tray", "data_dir"),
    "scorer": ("model",),
}


def _expand(value: str, base: Path) -> str:
    text = os.path.expandvars(os.path.expanduser(value))
    path = Path(text)
    return str(path if path.is_absolute() else (base / path).resolve())


def _build(cls: type, data: Any, where: str, base: Path, section: str | None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls) if f.name != "source"}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: "
                          f"{sorted(known)}")
    missing = [n for n, f in known.items() if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and n not in data]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS and section is None:
            values[key] = _build(_SECTIONS[key], value or {}, f"{where}.{key}", base, key)
            continue
        if value is not None and key in _PATH_KEYS.get(section, ()):
            value = _expand(str(value), base)
        if key == "data_roots" and value is not None:
            value = tuple(_expand(str(v), base) for v in value)
        values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def config_path(explicit: str | Path | None = None, default: str | Path | None = None) -> Path:
    """The configuration file: ``explicit``, else ``$PBI_BEAMLINE_CONFIG``, else
    ``default``."""
    chosen = explicit or os.environ.get(ENV_VAR) or default
    if not chosen:
        raise ConfigError(f"no beamline configuration: pass a file or set {ENV_VAR}")
    return Path(chosen)


def load_config(path: str | Path | None = None) -> BeamlineConfig:
    """Read and validate a ``beamline.yaml`` (see the module docstring).

    Raises
    ------
    ConfigError
        With the file and the key at fault.
    """
    import yaml

    path = config_path(path)
    if not path.is_file():
        raise ConfigError(f"beamline configuration not found: {path} (set {ENV_VAR} or "
                          "pass the file)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    cfg = _build(BeamlineConfig, data, str(path), path.resolve().parent, None)
    cfg = dataclasses.replace(cfg, source=str(path))
    if cfg.device_api not in ("ophyd", "async"):
        raise ConfigError(f"{path}: device_api must be 'ophyd' (stock ophyd, Resource/Datum) "
                          f"or 'async' (ophyd-async, StreamResource), got {cfg.device_api!r}")
    if cfg.scorer.overflow not in ("block", "shed"):
        raise ConfigError(f"{path}: scorer.overflow must be 'block' or 'shed'")
    return cfg
