"""Read the beamline configuration (profiles/profile_saxs/beamline.yaml).

Defines ``BEAMLINE_CONFIG`` (dict) for the following startup files. ``PBI_PREFIX`` in the
environment overrides the prefix; ``PBI_NO_PLOTS=1`` disables live plots.
"""

import logging
import os
from pathlib import Path

import yaml


def _profile_dir() -> Path:
    if "__file__" in globals():
        return Path(globals()["__file__"]).resolve().parents[1]
    try:  # running inside IPython
        return Path(get_ipython().profile_dir.location)  # type: ignore[name-defined]  # noqa: F821
    except NameError:
        return Path.cwd() / "profiles" / "profile_saxs"


PROFILE_DIR = _profile_dir()
_config_path = Path(os.environ.get("PBI_BEAMLINE_CONFIG", PROFILE_DIR / "beamline.yaml"))
if not _config_path.is_file():
    raise FileNotFoundError(f"beamline configuration not found: {_config_path}")
BEAMLINE_CONFIG = {
    "prefix": "SAXS:",
    "connection_timeout_s": 5.0,
    "detector_timeout_margin_s": 3.0,
    "default_exposure_s": 1.0,
    "plots": True,
    **(yaml.safe_load(_config_path.read_text()) or {}),
}
if os.environ.get("PBI_PREFIX"):
    BEAMLINE_CONFIG["prefix"] = os.environ["PBI_PREFIX"]
if os.environ.get("PBI_NO_PLOTS", "").lower() in ("1", "true", "yes"):
    BEAMLINE_CONFIG["plots"] = False
logging.getLogger("pbi_bluesky").info("beamline config from %s: %s", _config_path,
                                      BEAMLINE_CONFIG)
