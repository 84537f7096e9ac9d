"""The agent policy is data: the shipped file loads, every key is checked, bad input names
the key."""

from __future__ import annotations

import pytest

from pbi_bluesky.agent import DEFAULT_POLICY_FILE, AgentPolicy, PolicyError, load_policy


def test_shipped_policy_loads_with_its_documented_values():
    policy = load_policy()
    assert policy.source == str(DEFAULT_POLICY_FILE)
    assert policy.max_rescans == 1 and policy.position == "front"
    assert policy.reference_slots == (0,) and "empty_cell" in policy.reference_sample_types
    assert policy.user_group == "agent"
    assert load_policy(str(DEFAULT_POLICY_FILE)) == policy == load_policy(None)


@pytest.mark.parametrize("alias, position", [("next", "front"), ("front", "front"),
                                             ("end", "back"), ("back", "back")])
def test_position_aliases(alias, position):
    assert load_policy({"position": alias}).position == position


@pytest.mark.parametrize("data, key", [
    ({"max_rescan": 1}, "unknown key"),
    ({"max_rescans": -1}, "max_rescans"),
    ({"max_rescans": 1.5}, "max_rescans"),
    ({"max_rescans": True}, "max_rescans"),
    ({"position": "middle"}, "position"),
    ({"cooldown_s": -3}, "cooldown_s"),
    ({"cooldown_s": "soon"}, "cooldown_s"),
    ({"exposure_factor": 0}, "exposure_factor"),
    ({"reference_slots": "0"}, "reference_slots"),
    ({"reference_slots": [0.5]}, "reference_slots"),
    ({"reference_sample_types": "empty_cell"}, "reference_sample_types"),
    ({"min_max_score": "high"}, "min_max_score"),
    ({"user_group": ""}, "user_group"),
])
def test_bad_policies_are_refused_naming_the_key(data, key):
    with pytest.raises(PolicyError, match=key):
        load_policy(data)


@pytest.mark.parametrize("text, why", [("- a\n- b\n", "mapping"), ("max_rescans: [\n", "YAML")])
def test_bad_files_are_refused(tmp_path, text, why):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=why):
        load_policy(path)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")


def test_references_are_never_rescanned():
    policy = AgentPolicy(reference_slots=(0, 7), reference_sample_types=("empty_cell",))
    assert policy.is_reference(0, "sample") and policy.is_reference(7.0, None)
    assert policy.is_reference(3, "empty_cell") and policy.is_reference(3, None, "reference")
    assert not policy.is_reference(3, "sample", "survey")
    assert not policy.is_reference(None, None)
    assert policy.as_dict()["reference_slots"] == [0, 7]
