"""The sections of ``beamline.yaml`` and its loader (see :mod:`pbi_bluesky.config`)."""


from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pbi_bluesky.config.strict import (
    Bool,
    Count,
    Float,
    KeyFault,
    Positive,
    StrictModel,
    ValidationError,
    explain,
)

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

NonNegative = Annotated[Float, Field(ge=0)]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]


class ConfigError(ValueError):
    """The beamline configuration is missing, malformed or inconsistent.

    The message says which file and which key.
    """


def _expand(value: Any, info: ValidationInfo) -> Any:
    """Expand a path from the file: ``~`` and ``$VARS``, relative to the file's folder.

    Only when read from a file (``info.context["base"]``); objects built in code keep their
    paths as given.
    """
    base = (info.context or {}).get("base") if info.context else None
    if value is None or base is None:
        return value
    text = os.path.expandvars(os.path.expanduser(str(value)))
    path = Path(text)
    return str(path if path.is_absolute() else (Path(base) / path).resolve())


def _refuse_secret_keys(data: Any, keys: tuple[str, ...], hint: str) -> Any:
    if isinstance(data, dict):
        found = sorted(str(k) for k in data if str(k).lower() in keys)
        if found:
            raise KeyFault(found[0], f"secrets never live in beamline.yaml; {hint}")
    return data


def _no_credentials(url: str | None, what: str) -> str | None:
    if url is None:
        return url
    parts = urlsplit(url)
    if parts.password is not None or (parts.username and parts.scheme.startswith("http")):
        raise ValueError(f"{what} holds credentials (user:password@): secrets never live in "
                         "beamline.yaml")
    if any(k.lower() in ("api_key", "apikey", "token", "password")
           for k in parse_qs(parts.query)):
        raise ValueError(f"{what} holds a key in its query string: secrets never live in "
                         "beamline.yaml")
    return url


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


class TiledConfig(StrictModel):
    """Where runs are written.

    A Tiled server, or the embedded catalog when ``uri`` is null. The API key is read from
    the environment variable ``api_key_env``; it is never a field, so it appears in no
    repr, dump or log line.

    ``memory_mib`` bounds, in MiB, the documents each spool holds in memory on their way
    to Tiled and each Tiled writer's cache of events (default 256, see
    :mod:`pbi_bluesky.infra.memory`): past it the spool forwards documents from its file
    and the writer writes its cached events early. Nothing is dropped and the RunEngine
    never waits on it.
    """

    uri: str | None = None
    api_key_env: EnvName = "PBI_TILED_API_KEY"
    memory_mib: Count = 256

    @model_validator(mode="before")
    @classmethod
    def _no_key_in_file(cls, data: Any) -> Any:
        return _refuse_secret_keys(data, ("api_key", "apikey", "key", "token", "password"),
                                   "export the key in the environment variable named by "
                                   "tiled.api_key_env")

    @field_validator("uri")
    @classmethod
    def _no_credentials_in_uri(cls, uri: str | None) -> str | None:
        return _no_credentials(uri, "the Tiled URI")

    @property
    def api_key(self) -> str | None:
        """The key from the environment (never stored in, or logged from, the file)."""
        return os.environ.get(self.api_key_env) or None


class ScorerConfig(StrictModel):
    """Live-scorer settings (see :class:`pbi_bluesky.live.LiveScorer`).

    Parameters
    ----------
    model
        Model bundle folder; null: the model shipped with pbi_bluesky.
    queue_size, overflow, put_timeout_s
        The in-process scorer's bounded inbox: ``block`` waits up to ``put_timeout_s``
        for room, then sheds; ``shed`` sheds at once (every shed frame is counted).
    npt
        q bins of the reduction.
    batch_size
        Most frames reduced and scored in one pass (in-process and on each bus worker).
    data_roots
        Folders, besides the detector's read path, frame files may be read from.
    registry
        Model registry folder (``pbi model promote``): its current model, once one is
        promoted, replaces ``model`` (which stays the fallback); scorers follow it at each
        run start, never mid-run.
    """

    model: str | None = None
    registry: str | None = None
    queue_size: Count = 64
    overflow: Literal["block", "shed"] = "block"
    put_timeout_s: NonNegative = 0.5
    npt: Count = 400
    batch_size: Count = 16
    data_roots: tuple[str, ...] = ()

    _model_path = field_validator("model", "registry")(_expand)

    @field_validator("data_roots")
    @classmethod
    def _roots(cls, roots: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        return tuple(_expand(r, info) for r in roots)


class BusConfig(StrictModel):
    """The document bus shared by the ``pbi worker`` processes (:mod:`pbi_bluesky.bus`).

    Parameters
    ----------
    url
        Redis URL of the broker, e.g. ``redis://bus-host:6379/0`` (no password in it;
        ``pbi worker --broker`` overrides it per worker).
    claim_idle_s
        Seconds a work item may stay unacknowledged before another worker takes it.
    claim_every_s
        How often a worker looks for such items (default ``claim_idle_s / 2``).
    max_deliveries
        Deliveries before a work item is dead-lettered.
    lease_s
        The coordinator's lease: another worker takes over this long after it dies.
    retention_s
        How long finished runs' bus records are kept.
    tiled_batch
        Analysis events per Tiled write (each write cost ~0.4 s of server time here,
        whatever its size).
    password_env
        Environment variable holding the broker's password (``requirepass``), read by every
        bus client (workers, the session's publisher); unset: no password.
    """

    url: str | None = None
    claim_idle_s: Positive = 10.0
    claim_every_s: Positive | None = None
    max_deliveries: Count = 3
    lease_s: Positive = 10.0
    retention_s: Positive = 86400.0
    tiled_batch: Count = 256
    password_env: EnvName = "PBI_REDIS_PASSWORD"

    @model_validator(mode="before")
    @classmethod
    def _no_password_in_file(cls, data: Any) -> Any:
        return _refuse_secret_keys(data, ("password", "token", "key"),
                                   "give it to the workers through their environment")

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, url: str | None) -> str | None:
        return _no_credentials(url, "the bus URL")


class FeedConfig(StrictModel):
    """The verdict feed.

    The session publishes every analysis run's verdict to a Redis stream (usually on the
    Redis the queue server already runs) and ``pbi queue agent`` follows it
    (:mod:`pbi_bluesky.live.feed`); with ``url`` null there is no feed and the agent polls
    Tiled.

    Parameters
    ----------
    url
        Redis URL, e.g. ``redis://qserver-host:6379/0`` (no password in it: the password,
        if the server needs one, is read from the variable ``password_env``).
    stream
        Name of the stream (one per queue server; the agents' lease key is derived from it).
    maxlen
        Approximate bound of the stream (``XADD MAXLEN ~``): older verdicts are trimmed.
    password_env
        Environment variable holding the Redis password (unset: no password).
    lease_s
        The agents' lease on this Redis: a standby agent takes over this long after the
        holder dies (at most; the holder renews it every third of it).
    """

    url: str | None = None
    stream: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+$")] = "pbi:verdicts"
    maxlen: Count = 10000
    password_env: EnvName = "PBI_FEED_PASSWORD"
    lease_s: Positive = 3.0

    @model_validator(mode="before")
    @classmethod
    def _no_password_in_file(cls, data: Any) -> Any:
        return _refuse_secret_keys(data, ("password", "token", "key"),
                                   "export it in the variable named by feed.password_env")

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, url: str | None) -> str | None:
        return _no_credentials(url, "the feed URL")

    @property
    def password(self) -> str | None:
        """The Redis password from the environment (never stored in the file)."""
        return os.environ.get(self.password_env) or None


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

