"""One file describes a beamline: ``beamline.yaml``, read into one typed settings object.

:class:`BeamlineConfig` is what every part takes: the IPython profile and the queue
server's startup code (:func:`pbi_bluesky.session.build_session`), the live scorer
(:meth:`pbi_bluesky.live.LiveScorer.from_settings`), the frame-scoring engine
(:meth:`pbi_bluesky.scoring.engine.FrameScorer.from_settings`), the bus workers
(``pbi worker --config``), the demo and the agent. It names PVs and files, never a secret:
the Tiled API key comes from the environment variable ``tiled.api_key_env`` names, and a
key, password or credential-bearing URL written into the file is refused.

``PBI_BEAMLINE_CONFIG`` selects the file (:func:`config_path`); relative paths inside it are
relative to the file's folder; ``~`` and ``$VARS`` are expanded. Every section is a pydantic
model with ``extra="forbid"``: an unknown key, a missing one or a value of the wrong type
is a :class:`ConfigError` that names the file and the dotted key (a typo must never fall
back silently to a default).

Example (the simulated beamline; ``profiles/profile_saxs/beamline.yaml``)::

    name: pbi-sim
    detector:
      prefix: "SAXS:"          # areaDetector IOC prefix (cam1:, image1:, HDF1: below it)
      write_path: /tmp/pbi_sim_data
    changer: {motor: "SAXS:changer"}
    monitors: {i0: "SAXS:mon:I0", transmission: "SAXS:mon:Transmission"}
    geometry: {poni: sim_pilatus1m.poni, mask: sim_pilatus1m_mask.edf.gz}

Optional sections: ``tiled``, ``scorer`` (model, queue, q bins, batch), ``bus`` (the
document bus the ``pbi worker`` processes share), ``feed`` (the Redis stream of verdicts the
agent follows) and ``epics`` (the Channel Access client
environment, e.g. the loopback address list of the simulated IOC).
"""

from pbi_bluesky.config.beamline import (
    ENV_VAR,
    BeamlineConfig,
    BusConfig,
    ChangerConfig,
    ConfigError,
    DetectorConfig,
    EpicsConfig,
    FeedConfig,
    GeometryConfig,
    MonitorConfig,
    ScorerConfig,
    TiledConfig,
    config_path,
    load_config,
)

__all__ = [
    "ENV_VAR",
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
