"""Issue 20: every ``pbi`` command takes its Tiled key from ``$TILED_API_KEY``, so no key
sits on a command line (``/proc/PID/cmdline`` is readable by every local account);
``--api-key VALUE`` still works, hidden from ``--help``, with a warning that names no key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbi_bluesky.testing.services import TiledServer

PBI = str(Path(sys.executable).with_name("pbi"))
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    server = TiledServer(tmp_path_factory.mktemp("tiled")).start()
    yield server
    server.stop()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TILED_API_KEY", "PBI_TILED_API_KEY")}
    return {**env, **extra}


def _run(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, str]:
    """Run ``pbi ARGS`` and read its ``/proc`` command line while it runs."""
    proc = subprocess.Popen([PBI, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    cmdline = ""
    deadline = time.monotonic() + 10
    while not cmdline and time.monotonic() < deadline:  # python start-up takes >0.5 s
        try:
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            break
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), cmdline


def test_key_from_the_environment_is_on_no_command_line(tiled):
    result, cmdline = _run(["catalog", "flagged", "--tiled", tiled.uri],
                           _env(TILED_API_KEY=tiled.api_key))
    assert result.returncode == 0, result.stderr
    assert "0 flagged run(s)" in result.stdout
    assert tiled.uri in cmdline  # the command line was read while pbi ran
    assert tiled.api_key not in cmdline
    assert tiled.api_key not in result.stdout + result.stderr
    assert "--api-key on the command line" not in result.stderr


def test_a_wrong_key_in_the_environment_is_used_and_refused(tiled):
    result, _ = _run(["catalog", "flagged", "--tiled", tiled.uri],
                     _env(TILED_API_KEY="wrong0key"))
    assert result.returncode == 2
    assert "cannot open the Tiled catalog" in result.stderr
    assert "wrong0key" not in result.stderr


def test_key_on_the_command_line_works_and_warns_without_the_key(tiled):
    result, cmdline = _run(["catalog", "flagged", "--tiled", tiled.uri,
                            "--api-key", tiled.api_key], _env())
    assert result.returncode == 0, result.stderr
    assert "0 flagged run(s)" in result.stdout
    assert tiled.api_key in cmdline  # why the warning: anyone can read it
    assert "--api-key on the command line is visible to every user" in result.stderr
    assert "TILED_API_KEY" in result.stderr
    assert tiled.api_key not in result.stderr


@pytest.mark.parametrize("command", [["catalog", "flagged"], ["catalog", "replay-spool"],
                                     ["catalog", "label"], ["catalog", "rescore"],
                                     ["model", "train"], ["model", "score"], ["review"]])
def test_api_key_is_hidden_from_help_and_read_from_tiled_api_key(command):
    import typer.main

    from pbi_bluesky.cli import app

    group = typer.main.get_command(app)
    cmd = group
    for name in command:
        cmd = cmd.commands[name]
    (opt,) = [p for p in cmd.params if p.name == "api_key"]
    assert opt.hidden
    assert opt.envvar == "TILED_API_KEY"
    assert "--api-key" in opt.opts
