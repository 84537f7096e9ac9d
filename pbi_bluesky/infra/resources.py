"""Where the shipped profile folder is, in a checkout and in an installed copy.

The IPython / queue-server profile (``profile_saxs``: the startup code, the simulated
beamline's ``beamline.yaml``, the agent policy, the queue server's permissions) lives in
the repository's ``profiles/`` folder. A checkout (or an editable install) reads it there;
``pip install`` copies it to ``<prefix>/share/pbi_bluesky/profiles`` (the ``data-files`` of
``pyproject.toml``), so commands work from an installed copy too, whatever the working
folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["PROFILE_NAME", "profile_candidates", "profile_dir"]

PROFILE_NAME = "profile_saxs"


def profile_candidates(name: str = PROFILE_NAME) -> list[Path]:
    """Return the folders searched for the profile ``name``, in order.

    Parameters
    ----------
    name : str
        The profile's folder name (``profile_saxs``).

    Returns
    -------
    list of Path
        The checkout's ``profiles/<name>`` beside the package, then the installed copy's
        ``<sys.prefix>/share/pbi_bluesky/profiles/<name>`` (and the same under the base
        prefix, for a virtual environment made with ``--system-site-packages``).
    """
    checkout = Path(__file__).resolve().parents[2] / "profiles" / name
    prefixes = dict.fromkeys((sys.prefix, sys.base_prefix))
    return [checkout] + [Path(p) / "share" / "pbi_bluesky" / "profiles" / name
                         for p in prefixes]


def profile_dir(name: str = PROFILE_NAME, *, must_exist: bool = False) -> Path:
    """Return the shipped profile folder: the first of :func:`profile_candidates` that exists.

    Parameters
    ----------
    name : str
        The profile's folder name.
    must_exist : bool
        Raise when no candidate exists; otherwise return the checkout's path (so a module
        constant can be built at import time, and the error comes from whoever opens a
        file in it).

    Returns
    -------
    Path
        An absolute path.

    Raises
    ------
    FileNotFoundError
        With ``must_exist``, when neither a checkout nor an installed copy holds it.
    """
    candidates = profile_candidates(name)
    for folder in candidates:
        if folder.is_dir():
            return folder
    if must_exist:
        raise FileNotFoundError(
            f"the profile folder {name!r} is in none of "
            f"{', '.join(str(c) for c in candidates)}; reinstall pbi_bluesky "
            "(pip install keeps it under <prefix>/share/pbi_bluesky/profiles)")
    return candidates[0]
