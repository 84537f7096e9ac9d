"""The IPython session starts for real (`pbi ipython`) against the sim IOC, from a
beamline.yaml, and writes nothing into the repository's profile folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.beamline_fixtures import REPO_ROOT


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.e2e
def test_pbi_ipython_runs_the_session_from_beamline_yaml(sim_config, model_300k,
                                                         tmp_path):
    from pbi_bluesky.models import save_bundle

    save_bundle(model_300k, tmp_path / "model")
    cfg = sim_config.with_overrides(scorer={"model": str(tmp_path / "model")})
    config = cfg.to_yaml(tmp_path / "beamline.yaml")
    profile = REPO_ROOT / "profiles" / "profile_saxs"
    before = _tree(profile)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    code = ("uids = RE(measure_tray(dets, changer, [6], 0.1)); pbi.flush(300); "
            "r = pbi.channel.results(uids[0])[0]; _session.close(300); "
            "print('RESULT', type(pbi).__name__, r.status, r.reason, RE.md['scan_id'], "
            "uids[0] in catalog.runs)")
    cmd = [sys.executable, "-m", "pbi_bluesky.cli", "ipython", "--config", str(config),
           "--data-dir", str(tmp_path / "data"), "--no-plots", "--", "-c", code]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pbi-sim" in proc.stdout and "Live anomaly scoring is on" in proc.stdout
    result = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    assert result.startswith("RESULT LiveScorer scored"), result
    assert result.endswith("True"), result  # the raw run reached the catalog
    assert _tree(profile) == before  # no history, security or log files in the repo
    assert (tmp_path / "data" / "ipython_profile").is_dir()
    # scan_id persists across sessions: the PersistentDict in the data folder holds it (a
    # second session reads it the same way; not started here, it costs ~20 s)
    from bluesky.utils import PersistentDict

    first_id = int(result.split()[-2])
    stored = [p for p in (tmp_path / "data").rglob("runengine-metadata") if p.is_dir()]
    assert len(stored) == 1, stored
    assert PersistentDict(str(stored[0]))["scan_id"] == first_id
