"""The IPython profile starts for real: `ipython --profile-dir=...` against the sim IOC."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.beamline_fixtures import REPO_ROOT, sim_ioc  # noqa: F401


def test_ipython_starts_the_beamline_session(sim_ioc, tmp_path):  # noqa: F811
    profile = tmp_path / "profile_saxs"  # a copy: IPython writes history and logs into it
    shutil.copytree(REPO_ROOT / "profiles" / "profile_saxs", profile)
    env = {**os.environ, **sim_ioc.env, "PBI_PREFIX": sim_ioc.prefix, "PBI_NO_PLOTS": "1",
           "PBI_DATA_DIR": str(tmp_path / "data"), "MPLBACKEND": "Agg"}
    code = ("uids = RE(measure_tray(saxs, changer, [6], 0.05)); pbi.flush(60); "
            "print('RUNS', len(uids), type(pbi).__name__, uids[0] in runs or 'pending')")
    ipython = Path(sys.executable).with_name("ipython")
    proc = subprocess.run([str(ipython), f"--profile-dir={profile}", "--no-banner", "-c", code],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "connected" in proc.stdout  # the how-to printed by the startup files
    assert "Live anomaly scoring is on" in proc.stdout
    assert "RUNS 1 LiveScorer" in proc.stdout
