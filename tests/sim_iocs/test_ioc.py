"""The simulated beamline IOC: PV list, tray files, HDF5 writer."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from sim_iocs.tray import TrayError, default_tray, dump_tray, load_tray, parse_tray
from tests.beamline_fixtures import (
    REPO_ROOT,
    TEST_TRAY,
    ca_get,
    ca_put,
    move_changer,
    sim_ioc,  # noqa: F401 - pytest fixture
)

REQUIRED = [
    "Ready",
    "cam1:Acquire", "cam1:AcquireTime", "cam1:NumImages", "cam1:ImageMode",
    "cam1:DetectorState_RBV", "cam1:ArrayCounter_RBV", "cam1:ArraySize0_RBV",
    "cam1:ArraySize1_RBV", "cam1:PONI", "image1:ArrayData",
    "HDF1:FilePath", "HDF1:FileName", "HDF1:FileNumber", "HDF1:FullFileName_RBV",
    "HDF1:Capture", "HDF1:NumCaptured_RBV", "HDF1:EnableCallbacks",
    "changer:VAL", "changer:RBV", "changer:DMOV", "changer:STOP", "changer:HLM",
    "changer:LLM", "changer:VELO",
    "beam:Shutter", "beam:I0", "beam:Transmission", "beam:Flux",
    "fault:BeamDump", "fault:HotPixels", "fault:BeamCenterDrift", "fault:DetectorTimeout",
    "tray:NumSlots",
]


def test_print_pvs_lists_every_pv(tmp_path):
    tray = dump_tray(parse_tray(TEST_TRAY), tmp_path / "tray.yaml")
    out = subprocess.run(
        [sys.executable, "-m", "sim_iocs.saxs_beamline", "--prefix", "X:", "--tray", str(tray),
         "--print-pvs"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.split()
    missing = [p for p in REQUIRED if f"X:{p}" not in out]
    assert not missing, f"missing PVs: {missing}"
    n_slots = len(TEST_TRAY)
    for slot in range(0, n_slots + 1):  # position 0: the empty cell
        for field in ("Name", "Composition", "Thickness"):
            assert f"X:tray:{slot}:{field}" in out
    assert f"X:tray:{n_slots + 1}:Name" not in out
    assert all(p.startswith("X:") for p in out)


def test_default_tray_mixes_normals_and_anomalies():
    tray = default_tray()
    assert len(tray) == 14
    kinds = {s.kind for s in tray}
    assert "normal" in kinds and len(kinds) >= 5
    assert any(s.transient and s.faults for s in tray)
    assert [s.slot for s in tray] == sorted({s.slot for s in tray})


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_tray_roundtrip(tmp_path, suffix):
    slots = parse_tray(TEST_TRAY)
    path = dump_tray(slots, tmp_path / f"tray{suffix}")
    assert load_tray(path) == slots


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "non-empty list"),
        ({"slots": "nope"}, "non-empty list"),
        ([{"sample": "a", "composition": "50:50"}], "missing required key 'slot'"),
        ([{"slot": 0, "sample": "a", "composition": "50:50"}], "integer >= 1"),
        ([{"slot": 1, "sample": "a", "composition": "half"}], "bad composition"),
        ([{"slot": 1, "sample": "a", "composition": "50:50", "kind": "gremlins"}],
         "unknown kind 'gremlins'"),
        ([{"slot": 1, "sample": "a", "composition": "0:100", "kind": "coarsening"}],
         "does not apply"),
        ([{"slot": 1, "sample": "a", "composition": "50:50", "severity": 2}],
         r"severity must be in \[0, 1\]"),
        ([{"slot": 1, "sample": "a", "composition": "50:50", "faults": {"gremlin": 1}}],
         "unknown fault 'gremlin'"),
        ([{"slot": 1, "sample": "a", "composition": "50:50", "colour": "red"}],
         "unknown key"),
        ([{"slot": 1, "sample": "x" * 60, "composition": "50:50"}], "sample name"),
        ([{"slot": 2, "sample": "a", "composition": "50:50"},
          {"slot": 2, "sample": "b", "composition": "50:50"}], "slot 2 is defined more"),
    ],
)
def test_tray_errors_are_clear(data, message):
    with pytest.raises(TrayError, match=message):
        parse_tray(data, "t.yaml")


def test_tray_file_errors(tmp_path):
    with pytest.raises(TrayError, match="not found"):
        load_tray(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("slots: [1, 2\n")
    with pytest.raises(TrayError, match="cannot parse"):
        load_tray(bad)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps([{"slot": 1, "sample": "a"}]))
    with pytest.raises(TrayError, match=r"bad.json: entry 0 \(slot 1\): missing required key"):
        load_tray(bad_json)


def test_served_tray_and_limits(sim_ioc):  # noqa: F811
    p = sim_ioc.prefix
    assert int(ca_get(f"{p}tray:NumSlots")) == 8
    assert ca_get(f"{p}tray:2:Name") == b"C50-a"
    assert ca_get(f"{p}tray:2:Composition") == b"50:50"
    assert float(ca_get(f"{p}changer:LLM")) == 0.0  # position 0: the empty cell
    assert float(ca_get(f"{p}changer:HLM")) == 8.0


def test_hdf5_writer(sim_ioc, tmp_path):  # noqa: F811
    import h5py
    from caproto.sync.client import read

    p = sim_ioc.prefix
    move_changer(p, 5)
    ca_put(f"{p}HDF1:FilePath", str(tmp_path))
    ca_put(f"{p}HDF1:FileName", "hdftest")
    ca_put(f"{p}HDF1:EnableCallbacks", 1)
    ca_put(f"{p}cam1:AcquireTime", 0.05)
    try:
        before = int(ca_get(f"{p}HDF1:FileNumber"))
        ca_put(f"{p}cam1:Acquire", 1)
        for _ in range(200):
            if int(ca_get(f"{p}HDF1:FileNumber")) == before + 1:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"no HDF5 file written; IOC log:\n{sim_ioc.log_tail()}")
    finally:
        ca_put(f"{p}HDF1:EnableCallbacks", 0)
    name = bytes(read(f"{p}HDF1:FullFileName_RBV", repeater=False).data).rstrip(b"\0").decode()
    assert name == str(tmp_path / f"hdftest_{before:05d}.h5")
    assert int(ca_get(f"{p}HDF1:NumCaptured_RBV")) == 1
    ny, nx = int(ca_get(f"{p}cam1:ArraySize1_RBV")), int(ca_get(f"{p}cam1:ArraySize0_RBV"))
    flat = read(f"{p}image1:ArrayData", repeater=False).data
    last = np.asarray(flat, dtype=np.int32).reshape(ny, nx)
    with h5py.File(name, "r") as f:
        data = f["/entry/data/data"]
        assert data.shape == (1, ny, nx)
        assert data.dtype == np.dtype("<i4")
        np.testing.assert_array_equal(data[0], last)


def test_fixture_reports_ioc_startup_failure_with_its_log(tmp_path):
    from tests.beamline_fixtures import start_sim_ioc

    with pytest.raises(RuntimeError, match="(?s)exited with code 2.*invalid choice"):
        start_sim_ioc(tmp_path, detector="Eiger9M")
