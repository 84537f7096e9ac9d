"""Tray files of the simulated beamline: parsing, errors, and what a plan may know."""

from __future__ import annotations

import json

import pytest

from sim_iocs.tray import (
    EMPTY_CELL,
    TrayError,
    default_tray,
    dump_tray,
    load_tray,
    parse_tray,
    public_tray,
)
from tests.beamline_fixtures import TEST_TRAY


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


def test_public_tray_hides_the_truth():
    slots = parse_tray(TEST_TRAY)
    rows = public_tray(slots)
    assert rows[0] == EMPTY_CELL == {"slot": 0, "sample": "empty cell",
                                     "sample_type": "empty_cell"}
    assert [r["slot"] for r in rows[1:]] == [s.slot for s in slots]
    for row, slot in zip(rows[1:], slots, strict=True):
        assert row == {"slot": slot.slot, "sample": slot.sample,
                       "composition": slot.composition, "thickness_cm": slot.thickness_cm,
                       "sample_type": "sample"}
    text = json.dumps(rows)
    for secret in ("kind", "severity", "faults", "transient", "contamination", "beam_dump"):
        assert secret not in text
    rows[0]["sample"] = "changed"  # callers get copies
    assert EMPTY_CELL["sample"] == "empty cell"


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
