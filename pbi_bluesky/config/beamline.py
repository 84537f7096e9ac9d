"""The sections of ``beamline.yaml`` and its loader (see :mod:`pbi_bluesky.config`)."""


from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from pbi_bluesky.config.services import BusConfig as BusConfig
from pbi_bluesky.config.services import FeedConfig as FeedConfig
from pbi_bluesky.config.services import ScorerConfig as ScorerConfig
from pbi_bluesky.config.services import TiledConfig as TiledConfig
from pbi_bluesky.config.strict import (
    Bool,
    ConfigError,
    Count,
    Float,
    NonNegative,
    Port,
    Positive,
    StrictModel,
    ValidationError,
    explain,
)
from pbi_bluesky.config.strict import expand_path as _expand

__all__ = [
    "BeamlineConfig",
    "BusConfig",
    "ChangerConfig",
    "ConfigError",
    "DetectorConfig",
    "EpicsConfig",
    "FeedConfig",
    "GeometryConfig",
    "MonitorConfig",
    "ScorerConfig",
    "TiledConfig",
    "config_path",
    "load_config",
]

ENV_VAR = "PBI_BEAMLINE_CONFIG"
SECRET_SECTIONS = ("tiled", "bus", "feed")
"""Sections whose offending values are never repeated in an error message."""


class DetectorConfig(StrictModel):
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
    kind: Literal["pilatus"] = "pilatus"
    name: str = "saxs"
    write_path: str = "/tmp/pbi_data"
    read_path: str | None = None
    timeout_margin_s: NonNegative = 3.0

    @property
    def local_path(self) -> str:
        """Where this machine reads the detector's files."""
        return self.read_path or self.write_path


class ChangerConfig(StrictModel):
    """The sample changer: a motor record whose positions are slot numbers."""

    motor: str
    name: str = "changer"


class MonitorConfig(StrictModel):
    """Incident-flux (I0) and transmission readings.

    Plain analog PVs (scaler channel, electrometer, calculated transmission).
    """

    i0: str
    transmission: str | None = None
    i0_name: str = "i0"
    transmission_name: str = "transmission"


class GeometryConfig(StrictModel):
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
        pyFAI polarisation factor in [-1, 1] (0.99 for a horizontally polarised
        synchrotron beam; null: no correction).
    absolute_scale
        Scale-factor file written by ``pbi calibrate-absolute`` (optional).
    """

    poni: str
    mask: str | None = None
    dark: str | None = None
    flat: str | None = None
    polarization_factor: Annotated[Float, Field(ge=-1, le=1)] | None = 0.99
    absolute_scale: str | None = None

    _paths = field_validator("poni", "mask", "dark", "flat", "absolute_scale")(_expand)

    def poni_text(self) -> str:
        """Return the PONI file's text (raises :class:`ConfigError` if it cannot be read)."""
        try:
            return Path(self.poni).read_text()
        except OSError as exc:
            raise ConfigError(f"geometry.poni: cannot read {self.poni}: {exc}") from exc


class EpicsConfig(StrictModel):
    """The Channel Access client environment the session needs to find the IOCs.

    Each key set here becomes the ``EPICS_CA_*`` variable of the same name
    (:meth:`environment`); a variable already set in the environment wins. The simulated
    beamline serves on loopback only, where a default client (broadcast search) would not
    find it: its file sets ``ca_addr_list: 127.0.0.1`` and ``ca_auto_addr_list: false``.
    """

    ca_addr_list: str | None = None
    ca_auto_addr_list: Bool | None = None
    ca_server_port: Port | None = None
    ca_repeater_port: Port | None = None
    ca_max_array_bytes: Count | None = None

    def environment(self) -> dict[str, str]:
        """Return the ``EPICS_CA_*`` variables this section sets (unset keys are left out)."""
        out = {}
        for key, value in self.model_dump().items():
            if value is None:
                continue
            text = ("YES" if value else "NO") if isinstance(value, bool) else str(value)
            out[f"EPICS_{key.upper()}"] = text
        return out

    def apply(self, environ: Any = None) -> dict[str, str]:
        """Set the variables of :meth:`environment` that ``environ`` does not set yet.

        ``environ`` defaults to ``os.environ``; returns the variables it set.
        """
        environ = os.environ if environ is None else environ
        applied = {}
        for name, value in self.environment().items():
            if name not in environ:
                environ[name] = applied[name] = value
        return applied


class BeamlineConfig(StrictModel):
    """Everything that makes a beamline (see the module docstring).

    ``source`` is where the object came from (the file's path; set by
    :func:`load_config`, never read from the file).
    """

    detector: DetectorConfig
    changer: ChangerConfig
    monitors: MonitorConfig
    geometry: GeometryConfig
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+$")] = "pbi"
    device_api: Literal["ophyd", "async"] = "ophyd"
    tray: str | None = None
    tiled: TiledConfig = Field(default_factory=TiledConfig)
    scorer: ScorerConfig = Field(default_factory=ScorerConfig)
    bus: BusConfig = Field(default_factory=BusConfig)
    epics: EpicsConfig = Field(default_factory=EpicsConfig)
    feed: FeedConfig = Field(default_factory=FeedConfig)
    data_dir: str | None = None
    default_exposure_s: Positive = 1.0
    connection_timeout_s: Positive = 5.0
    plots: Bool = True
    source: str = "<memory>"

    _paths = field_validator("tray", "data_dir")(_expand)

    @property
    def image_key(self) -> str:
        """Data key of the detector's frames in event descriptors."""
        return f"{self.detector.name}_image"

    @property
    def data_roots(self) -> tuple[str, ...]:
        """Folders the live scorer may read frames from.

        The detector's read path, plus any configured under ``scorer.data_roots``.
        """
        return (self.detector.local_path, *self.scorer.data_roots)

    def public(self) -> dict[str, Any]:
        """Return plain data safe to log or to record in a start document.

        No secrets: the API key is never part of the configuration.
        """
        out = self.model_dump(mode="json")
        out["tiled"]["api_key_set"] = self.tiled.api_key is not None
        return out

    def to_yaml(self, path: str | Path) -> Path:
        """Write this configuration as a ``beamline.yaml``.

        Every key, absolute paths as held; :func:`load_config` reads it back to an equal
        object.
        """
        import yaml

        path = Path(path)
        data = self.model_dump(mode="json", exclude={"source"})
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def with_overrides(self, **sections: Any) -> BeamlineConfig:
        """Return a copy with some fields of some sections replaced, validated like the file.

        E.g. ``cfg.with_overrides(detector={"prefix": "P:"}, connection_timeout_s=1.0)``.

        Raises
        ------
        ConfigError
            Naming the key, for an unknown key or a bad value.
        """
        data = self.model_dump()
        for name, values in sections.items():
            if isinstance(values, dict) and isinstance(data.get(name), dict):
                data[name] = {**data[name], **values}
            else:
                data[name] = values
        return _validate(data, f"{self.source} (with overrides)")


def _validate(data: dict[str, Any], where: str, base: Path | None = None) -> BeamlineConfig:
    try:
        return BeamlineConfig.model_validate(data, context={"base": base} if base else None)
    except ValidationError as exc:
        raise ConfigError(explain(exc, BeamlineConfig, where,
                                  hide_values=SECRET_SECTIONS)) from None


def config_path(explicit: str | Path | None = None, default: str | Path | None = None) -> Path:
    """Return the configuration file path.

    ``explicit``, else ``$PBI_BEAMLINE_CONFIG``, else ``default``.
    """
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
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got "
                          f"{type(data).__name__}")
    if "source" in data:  # where the object came from is not the file's to say
        known = sorted(k for k in BeamlineConfig.model_fields if k != "source")
        raise ConfigError(f"{path}: source: unknown key; known: {known}")
    return _validate({**data, "source": str(path)}, str(path), path.resolve().parent)

