"""The typer application and logging set-up shared by every ``pbi`` command.

Commands live in the sibling modules (one per area) and register themselves on :data:`app`;
heavy libraries are imported inside the commands, so ``pbi --help`` and light commands start
fast (measured by ``benchmarks/bench_startup.py``).

Logging: at the default level a scientist's terminal shows the INFO messages of this package
and of the simulated IOCs, and every library's warnings and errors, but no third-party INFO
chatter (alembic migrations, Tiled's version banner, ...) and no notice about an optional
accelerator (silx without pyopencl). Some libraries set their own logger levels or attach their own
handlers when imported, *after* this set-up ran, so the filter sits on the root handler and
on the loggers known to print through a handler of their own. ``--verbose`` shows
everything at DEBUG.
"""

from __future__ import annotations

import functools
import inspect
import logging
import warnings
from collections.abc import Callable
from typing import Annotated, Any

import typer

__all__ = ["API_KEY_ENV", "OWN_LOGGERS", "OWN_PREFIX", "SUBAPPS", "ApiKeyOpt", "QuietThirdParty",
           "app", "bus_app",
           "catalog_app", "command", "data_app", "model_app", "queue_app", "require_extra",
           "sim_app"]

OWN_PREFIX = "pbi_bluesky"
OWN_LOGGERS = (OWN_PREFIX, "sim_iocs", "__main__")
"""Loggers whose INFO lines a scientist sees: this package and the simulated IOCs."""
# warnings about optional accelerators a user need not install (silx without pyopencl):
# shown with --verbose only
_OPTIONAL_NOTICES = ("silx.opencl.common",)
# loggers that attach a handler of their own on import (seen in tiled 0.2.20)
_SELF_HANDLED = ("tiled.server.app", "tiled.access_control.access_policies",
                 "tiled.catalog.migrations")

app = typer.Typer(
    name="pbi",
    help="PolyBlendInsight for Bluesky: SAXS simulation, reduction and anomaly detection.",
    no_args_is_help=True,
    add_completion=False,
)


def _sub(name: str, help_text: str) -> typer.Typer:
    sub = typer.Typer(name=name, help=help_text, no_args_is_help=True, add_completion=False)
    app.add_typer(sub, name=name)
    return sub


# Sub-apps by what the user does (tiled's CLI is the model). With demo, ipython and review
# at the top that makes 9 top-level entries; every older name stays as a hidden alias.
data_app = _sub("data", "Simulated and measured data: simulate, reduce, calibrate-absolute.")
model_app = _sub("model", "Model bundles: train, score, evaluate and the model registry.")
catalog_app = _sub("catalog", "The Tiled catalog: flagged runs, labels, rescoring, the spool.")
sim_app = _sub("sim", "The simulated beamline: caproto IOCs serving standard PV names.")
bus_app = _sub("bus", "Scale-out scoring over a Redis bus: workers and dead letters.")
queue_app = _sub("queue", "The queue server side: the rescan agent.")
SUBAPPS = {"data": data_app, "model": model_app, "catalog": catalog_app, "sim": sim_app,
           "bus": bus_app, "queue": queue_app}


def _listlike(paragraph: str) -> bool:
    """Whether a paragraph is a list or an indented block (its line breaks mean something)."""
    return any(line.lstrip().startswith(("-", "*", "pbi ", "$")) or line.startswith(" ")
               for line in paragraph.splitlines())


def reflow(doc: str) -> str:
    """Return a docstring as help text: each prose paragraph on one line.

    Typer keeps the single line breaks of every paragraph after the first, so a docstring
    wrapped at 92 columns printed at 80 breaks mid-sentence; joined, the terminal wraps it.
    Lists and indented blocks keep their lines.
    """
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if _listlike(p) else " ".join(p.split()) for p in paragraphs)


def command(sub: typer.Typer | None, name: str, *, old: str | None = None,
            **settings: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command on a sub-app (or the top level), with a hidden alias under its old name.

    Parameters
    ----------
    sub : typer.Typer or None
        The sub-app (``model_app`` ...); ``None`` for a top-level command.
    name : str
        The command's name within ``sub``.
    old : str, optional
        The top-level name the command had before the sub-apps (``pbi train``): it keeps
        working, hidden from ``--help``, and logs where the command lives now, so no
        user's script breaks.
    **settings
        Passed to :meth:`typer.Typer.command` (``context_settings`` ...).
    """

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        if "help" not in settings and func.__doc__:
            settings["help"] = reflow(func.__doc__)
        (sub or app).command(name, **settings)(func)
        if old is not None:
            where = f"pbi {sub.info.name} {name}" if sub is not None else f"pbi {name}"

            @functools.wraps(func)
            def alias(*args: Any, **kwargs: Any) -> Any:
                logging.getLogger(OWN_PREFIX + ".cli").warning(
                    "'pbi %s' is now '%s'; the old name keeps working", old, where)
                return func(*args, **kwargs)

            app.command(old, hidden=True, **settings)(alias)
        return func

    return register


def require_extra(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Stop a command with a one-line error naming the extra to install, if one is missing.

    Parameters
    ----------
    extra : str
        The extra (``bus``, ``queue``, ``dask``, ``sim`` ...; see
        :data:`pbi_bluesky.infra.extras.EXTRAS`).
    what : str
        The command, for the message (``"pbi bus worker"``).
    modules : tuple of str, optional
        Only these import names of the extra.

    Raises
    ------
    typer.Exit
        Code 3, after printing ``error: ... pip install 'pbi_bluesky[extra]'``.
    """
    from pbi_bluesky.infra.extras import MissingExtra, require

    try:
        require(extra, what, modules)
    except MissingExtra as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from exc


API_KEY_ENV = "TILED_API_KEY"
"""Where every ``pbi`` command reads a Tiled API key: tiled's own variable."""


def _api_key_on_command_line(ctx: typer.Context, param: typer.CallbackParam,
                             value: str | None) -> str | None:
    """Warn (without the key) when a Tiled key came as ``--api-key VALUE``, not the environment."""
    # by name: typer 0.29 carries a click of its own, with its own ParameterSource enum
    source = ctx.get_parameter_source(param.name) if param.name else None
    if value and getattr(source, "name", None) == "COMMANDLINE":
        logging.getLogger(OWN_PREFIX + ".cli").warning(
            "--api-key on the command line is visible to every user of this machine "
            "(/proc/PID/cmdline, ps); set %s in the environment instead", API_KEY_ENV)
    return value or None


ApiKeyOpt = Annotated[str | None, typer.Option(
    "--api-key", envvar=API_KEY_ENV, hidden=True, callback=_api_key_on_command_line,
    help=f"Tiled API key; give it as ${API_KEY_ENV} instead (a command line is public).")]
"""The Tiled API key option every ``pbi`` command shares: read from ``$TILED_API_KEY``.

``--api-key VALUE`` still works for old scripts, hidden from ``--help``, and logs a one-line
warning that the key is visible to every local user; the key itself is never logged.
"""


class QuietThirdParty(logging.Filter):
    """Pass records of this package and ``sim_iocs`` at any level, others' from WARNING up.

    Third-party INFO chatter (alembic migrations, Tiled's version banner, caproto's
    listening lines) stays off a scientist's terminal; every warning shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Return whether ``record`` reaches the terminal."""
        if record.levelno >= logging.WARNING:
            return True
        name = record.name
        return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


_FILTER = QuietThirdParty()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if verbose:
        return
    for name in _OPTIONAL_NOTICES:
        logging.getLogger(name).setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    for name in _SELF_HANDLED:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    # other libraries' deprecation notices are for their developers, not for a beamline
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=rf"(?!{OWN_PREFIX})")
    warnings.filterwarnings("ignore", message=r".*deprecated.*", category=UserWarning,
                            module=r"(?!pbi_bluesky)")


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _setup_logging(verbose)
