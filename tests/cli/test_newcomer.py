"""Issue 21's newcomer bugs: what a new user hits following the README by hand.

- the sim IOC's files land where the caller looks, whatever its working folder
  (``pbi demo`` from any folder);
- ``--list-pvs`` logs the names and serves (caproto's convention);
- ``pbi sim iocs`` says at the default level that it serves, which prefix, where and what a
  client must export, with no third-party noise;
- ``pbi sim iocs`` and ``pbi ipython`` as two processes with a plain environment (no
  ``EPICS_*`` variable) connect, through the simulated beamline file's ``epics`` section.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from glob import glob
from pathlib import Path

import pytest

from pbi_bluesky.infra.resources import profile_candidates, profile_dir
from sim_iocs.saxs_beamline import client_environment, startup_lines
from tests.beamline_fixtures import EPICS_ENV, REPO_ROOT

SMALL_TRAY = [{"slot": 1, "sample": "N50-a", "composition": "50:50"}]


def plain_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any EPICS variable, as a new user's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
    env.update(MPLBACKEND="Agg", PYTHONUNBUFFERED="1", **extra)
    return env


def test_sim_ioc_files_are_absolute_from_any_folder(tmp_path, monkeypatch):
    """A relative folder (``pbi demo --out demo_output`` run from elsewhere) still gives
    the PONI and mask where the caller looks: the IOC runs with another cwd."""
    from pbi_bluesky.testing.iocs import start_sim_ioc, stop_sim_ioc

    monkeypatch.chdir(tmp_path)
    ioc = start_sim_ioc(Path("demo_output") / "ioc", SMALL_TRAY, detector="Pilatus300k",
                        env=EPICS_ENV)
    try:
        for path in (ioc.poni_path, ioc.mask_path, ioc.data_root, ioc.log_path):
            assert path.is_absolute(), path
        assert ioc.poni_path == tmp_path / "demo_output" / "ioc" / "geometry.poni"
        assert ioc.poni_path.is_file() and ioc.mask_path.is_file()
        assert "Detector" in ioc.poni_path.read_text()
    finally:
        stop_sim_ioc(ioc)


def test_client_environment_names_the_loopback_list():
    env = client_environment(["127.0.0.1"], environ={})
    assert env == {"EPICS_CA_ADDR_LIST": "127.0.0.1", "EPICS_CA_AUTO_ADDR_LIST": "NO"}
    port = client_environment(["127.0.0.1"], environ={"EPICS_CAS_SERVER_PORT": "5099"})
    assert port["EPICS_CA_SERVER_PORT"] == "5099"
    assert client_environment(["0.0.0.0"], environ={}) == {}  # broadcast search finds it
    lines = startup_lines("P:", 3, ["127.0.0.1"], Path("/tmp/d"), environ={})
    assert "prefix P:" in lines[0] and "127.0.0.1" in lines[0]
    assert "export: EPICS_CA_ADDR_LIST=127.0.0.1 EPICS_CA_AUTO_ADDR_LIST=NO " in lines[-1]


def test_simulated_beamline_file_carries_the_loopback_list():
    from pbi_bluesky.config import load_config

    cfg = load_config(REPO_ROOT / "profiles" / "profile_saxs" / "beamline.yaml")
    assert cfg.epics.environment() == client_environment(["127.0.0.1"], environ={})


def test_profile_is_found_and_shipped_in_a_wheel():
    """The checkout's profile is found; pyproject's data-files carry every file of it into
    ``<prefix>/share/pbi_bluesky/profiles`` (where an installed copy looks)."""
    assert profile_dir(must_exist=True) == REPO_ROOT / "profiles" / "profile_saxs"
    assert any(str(c).startswith(sys.prefix) for c in profile_candidates())
    data_files = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["data-files"]
    shipped = {}
    for target, patterns in data_files.items():
        for pattern in patterns:
            for path in glob(str(REPO_ROOT / pattern)):
                shipped[Path(path).relative_to(REPO_ROOT)] = target
    tracked = subprocess.run(["git", "ls-files", "profiles"], cwd=REPO_ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
    tracked = {Path(p) for p in tracked if not p.endswith(".gitignore")}
    assert tracked and tracked <= set(shipped), tracked - set(shipped)
    for path, target in shipped.items():
        assert target == "share/pbi_bluesky/" + str(path.parent), (path, target)


def _wait_for(proc: subprocess.Popen, log_path: Path, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if needle in text:
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in the IOC's output within {timeout:g} s:\n"
                         + log_path.read_text(errors="replace")[-4000:])


@pytest.mark.e2e
def test_pbi_sim_iocs_and_pbi_ipython_connect_with_a_plain_environment(tmp_path):
    """The README's two terminals: ``pbi sim iocs`` in one, ``pbi ipython`` in the other,
    no EPICS variable exported. The IOC says where it serves and what a client exports;
    the session connects through the simulated beamline file's epics section."""
    from pbi_bluesky.config import load_config

    prefix = f"PBI{uuid.uuid4().hex[:8]}:"  # the default port is shared: not SAXS:
    data = tmp_path / "sim_data"
    cfg = load_config(REPO_ROOT / "profiles" / "profile_saxs" / "beamline.yaml")
    cfg = cfg.with_overrides(detector={"prefix": prefix, "write_path": str(data)},
                             changer={"motor": f"{prefix}changer"},
                             monitors={"i0": f"{prefix}mon:I0",
                                       "transmission": f"{prefix}mon:Transmission"})
    config = cfg.to_yaml(tmp_path / "beamline.yaml")
    pbi = [sys.executable, "-m", "pbi_bluesky.cli"]
    ioc_log = tmp_path / "ioc.log"
    with open(ioc_log, "wb") as out:
        ioc = subprocess.Popen([*pbi, "sim", "iocs", "--prefix", prefix, "--data-root",
                                str(data), "--list-pvs"], env=plain_env(), cwd=tmp_path,
                               stdout=out, stderr=subprocess.STDOUT)
    try:
        text = _wait_for(ioc, ioc_log, "must export", 90)
        assert f"prefix {prefix} on 127.0.0.1" in text
        assert "EPICS_CA_ADDR_LIST=127.0.0.1 EPICS_CA_AUTO_ADDR_LIST=NO" in text
        assert f"{prefix}cam1:Acquire" in text  # --list-pvs logged the names ...
        assert ioc.poll() is None  # ... and serves
        for noise in ("pyopencl", "backlog", "pyOpenCl"):
            assert noise not in text, text
        code = "print('CONNECTED', changer.position, RE.state)"
        session = subprocess.run(
            [*pbi, "ipython", "--config", str(config), "--data-dir", str(tmp_path / "data"),
             "--no-plots", "--", "-c", code],
            env=plain_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
        output = session.stdout + session.stderr
        assert session.returncode == 0, output[-4000:]
        connected = next((line for line in session.stdout.splitlines()
                          if line.startswith("CONNECTED")), None)
        assert connected == "CONNECTED 0.0 idle", output[-4000:]
    finally:
        ioc.send_signal(signal.SIGTERM)
        try:
            ioc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            ioc.kill()
            ioc.wait(timeout=5)


def test_an_installed_copy_finds_the_profile_under_its_prefix(tmp_path, monkeypatch):
    """Without a checkout beside the package, the profile comes from
    ``<sys.prefix>/share/pbi_bluesky/profiles`` (where pip puts the data-files); with
    neither, the error says where it looked."""
    import pbi_bluesky.infra.resources as resources

    monkeypatch.setattr(resources, "__file__", str(tmp_path / "site" / "pbi_bluesky" / "infra"
                                                   / "resources.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(sys, "base_prefix", str(tmp_path / "venv"))
    with pytest.raises(FileNotFoundError, match="share/pbi_bluesky/profiles"):
        resources.profile_dir(must_exist=True)
    shipped = tmp_path / "venv" / "share" / "pbi_bluesky" / "profiles" / "profile_saxs"
    shipped.mkdir(parents=True)
    assert resources.profile_dir(must_exist=True) == shipped
