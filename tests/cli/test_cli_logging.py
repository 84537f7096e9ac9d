"""The CLI's default log level: our INFO messages, no third-party INFO chatter."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

from pbi_bluesky.cli.app import QuietThirdParty


def record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "message", None, None)


def test_filter_keeps_ours_and_every_warning():
    f = QuietThirdParty()
    assert f.filter(record("pbi_bluesky.store.catalog", logging.INFO))
    assert f.filter(record("pbi_bluesky", logging.DEBUG))
    assert not f.filter(record("alembic.runtime.migration", logging.INFO))
    assert not f.filter(record("tiled.server.app", logging.INFO))
    assert not f.filter(record("pbi_bluesky_other", logging.INFO))
    assert f.filter(record("alembic.runtime.migration", logging.WARNING))
    assert f.filter(record("tiled.server.app", logging.ERROR))


def run_snippet(verbose: bool) -> str:
    code = textwrap.dedent(f"""
        import logging, warnings
        from pbi_bluesky.cli.app import _setup_logging
        _setup_logging({verbose})
        # a library that sets its own level and handler after our set-up (as tiled does)
        lib = logging.getLogger("tiled.server.app")
        lib.setLevel("INFO")
        lib.addHandler(logging.StreamHandler())
        lib.info("Tiled version banner")
        logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
        logging.getLogger("alembic.runtime.migration").warning("a real alembic warning")
        logging.getLogger("pbi_bluesky.store").info("using the embedded catalog")
        warnings.warn_explicit("old API is deprecated", DeprecationWarning, "x.py", 1,
                               module="starlette.testclient")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    return done.stderr


def test_default_level_hides_third_party_info():
    err = run_snippet(False)
    assert "using the embedded catalog" in err
    assert "a real alembic warning" in err
    assert "SQLiteImpl" not in err
    assert "Tiled version banner" not in err
    assert "deprecated" not in err


def test_verbose_shows_everything():
    err = run_snippet(True)
    assert "SQLiteImpl" in err and "Tiled version banner" in err
