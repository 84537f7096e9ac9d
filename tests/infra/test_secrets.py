"""Secrets and access (issue 20): no secret on a command line (``/proc/PID/cmdline`` is
readable by every local account), in a log or in a repr; Redis with a password from the
environment, in a 0600 ``redis.conf``, and an append-only file that survives a restart."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pbi_bluesky.testing.launch import Process, ServiceError
from pbi_bluesky.testing.services import RedisServer, TiledServer


def group_cmdlines(pid: int) -> dict[int, str]:
    """Command lines of every process in the process group ``pid`` leads (a service and the
    workers it forks)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pid:  # pgrp
                continue
            out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return out


def assert_nowhere(secret: str, service: Process) -> None:
    """``secret`` is on no command line of the service's processes and not in its log."""
    assert service.process is not None
    cmdlines = group_cmdlines(service.process.pid)
    assert service.process.pid in cmdlines
    for pid, cmdline in cmdlines.items():
        assert secret not in cmdline, f"{service.name} pid {pid}: {cmdline}"
    assert secret not in service.log_path.read_text(errors="replace"), service.log_path


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")


def test_tiled_key_is_on_no_command_line_and_in_no_log(tmp_path):
    server = TiledServer(tmp_path / "tiled").start()
    try:
        assert_nowhere(server.api_key, server)
        assert "***" in server.log_path.read_text()  # tiled printed it; the log has ***
        client = server.client()  # the server took the key from its environment
        client.create_container("written")
        assert "written" in client
        from tiled.client import from_uri

        with pytest.raises(Exception, match="401|[Uu]nauthori|[Ii]nvalid"):
            from_uri(server.uri, api_key="wrong0key")["written"]
    finally:
        server.stop()


def test_redis_password_from_the_environment_in_a_private_conf(tmp_path, monkeypatch):
    import redis

    from pbi_bluesky.bus import BusNames, BusPublisher, connect
    from pbi_bluesky.codec import decode
    from tests.live.docs import feed, run_docs

    password = secrets.token_hex(16)
    monkeypatch.setenv("PBI_REDIS_PASSWORD", password)
    server = RedisServer(tmp_path / "redis", password_env="PBI_REDIS_PASSWORD").start()
    try:
        assert_nowhere(password, server)
        assert password not in server.url
        assert stat.S_IMODE(server.conf_path.stat().st_mode) == 0o600
        # a client without the password is refused
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(server.url, socket_timeout=2).ping()
        with pytest.raises(redis.AuthenticationError):
            connect(server.url, password_env=None).ping()
        # the bus works with the password from the environment (the default variable)
        rng = np.random.default_rng(0)
        uid, docs = run_docs({"sample": "x"},
                             [(rng.integers(0, 9, (8, 8), dtype=np.int32), 1e6, 0.7)] * 3)
        pub = BusPublisher(server.url, "auth", outbox_dir=tmp_path / "outbox")
        feed(pub, docs)
        assert pub.close(timeout=30)
        assert pub.stats["published"] == len(docs), pub.stats
        names = BusNames("auth")
        entries = connect(server.url).xrange(names.documents)
        assert [f[b"name"].decode() for _i, f in entries] == [n for n, _ in docs]
        # a restart keeps the streams (append-only file)
        server.restart()
        assert_nowhere(password, server)
        after = connect(server.url).xrange(names.documents)
        assert [i for i, _f in after] == [i for i, _f in entries]
        assert decode(after[0][1][b"doc"])["uid"] == uid
    finally:
        server.stop()


def test_redis_without_append_only_file_loses_the_bus_on_restart(tmp_path):
    """The control: what ``appendonly`` buys (the default is on)."""
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        server.client().xadd("s", {"a": "1"})
        server.restart()
        assert server.client().xlen("s") == 0
    finally:
        server.stop()
    default = RedisServer(tmp_path / "default")
    assert default.appendonly


def test_a_secret_on_a_command_line_is_refused(tmp_path):
    class Leaky(Process):
        name = "leaky"

        def command(self) -> list[str]:
            return [sys.executable, "-c", "pass", "--key", "s3cr3tvalue"]

        def secrets(self) -> list[str]:
            return ["s3cr3tvalue"]

    with pytest.raises(ServiceError, match="secret is on the command line"):
        Leaky(tmp_path).start()


def test_the_log_of_a_service_is_redacted(tmp_path):
    class Talker(Process):
        name = "talker"

        def command(self) -> list[str]:
            return [sys.executable, "-c", "import os, time; print('key=' + os.environ['K'],"
                    " flush=True); time.sleep(60)"]

        def env(self) -> dict[str, str]:
            return {**os.environ, "K": "hushhush42"}

        def secrets(self) -> list[str]:
            return ["hushhush42"]

        def ready(self) -> bool:
            return "key=" in self.log_tail()

    talker = Talker(tmp_path).start(timeout=30)
    talker.stop()
    assert "key=***" in talker.log_path.read_text()
    assert "hushhush42" not in talker.log_path.read_text()


def test_redact_url():
    from pbi_bluesky.infra.secrets import redact_url

    assert redact_url("redis://:pw1@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("rediss://user:pw2@h/1") == "rediss://user:***@h/1"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert redact_url("http://h/api?api_key=k3y&x=1") == "http://h/api?api_key=***&x=1"
    assert redact_url(None) is None


def test_a_service_dies_with_a_sigkilled_parent(tmp_path):
    """A service started in its own session by a process that is SIGKILLed is not orphaned
    (PR_SET_PDEATHSIG)."""
    script = tmp_path / "parent.py"
    pidfile = tmp_path / "child.pid"
    script.write_text(
        "import sys, time\n"
        "from pbi_bluesky.testing.launch import Process\n"
        "class Sleeper(Process):\n"
        "    name = 'sleeper'\n"
        "    def command(self):\n"
        "        return [sys.executable, '-c', 'import time; time.sleep(120)']\n"
        "    def ready(self):\n"
        "        return True\n"
        f"s = Sleeper({str(tmp_path / 'w')!r}).start()\n"
        f"open({str(pidfile)!r}, 'w').write(str(s.process.pid))\n"
        "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        import time

        deadline = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.1)
        child = int(pidfile.read_text())
        os.kill(child, 0)  # alive
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            try:  # reaped by init meanwhile, or a zombie: either way it is not running
                if (Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
                        == "Z"):
                    break
            except OSError:
                break
            time.sleep(0.1)
        else:
            os.kill(child, 9)
            pytest.fail("the service outlived its SIGKILLed parent")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_temporary_workdir_is_removed_on_stop():
    server = RedisServer()
    folder = server.workdir
    server.start()
    server.restart()  # a restart keeps the folder and the data
    assert folder.is_dir()
    server.stop()
    assert not folder.exists()


def test_a_key_in_a_tiled_uri_is_not_logged(caplog):
    import logging

    import httpx

    from pbi_bluesky.infra.ports import free_port
    from pbi_bluesky.store import open_runs

    uri = f"http://127.0.0.1:{free_port()}/api/v1?api_key=urlkey0secret"
    with caplog.at_level(logging.INFO, logger="pbi_bluesky.store.catalog"):
        with pytest.raises((httpx.HTTPError, OSError)):  # nobody listens there
            open_runs(uri, timeout_s=1.0)
    assert "connecting to Tiled at" in caplog.text
    assert "urlkey0secret" not in caplog.text and "api_key=***" in caplog.text
