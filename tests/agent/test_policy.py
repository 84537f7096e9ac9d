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


@pytest.mark.parametrize("data, key", [
    ({"exposure_factor": float("inf")}, "exposure_factor"),
    ({"cooldown_s": float("nan")}, "cooldown_s"),
    ({"min_max_score": float("nan")}, "min_max_score"),
    ({"reference_slots": [0, True]}, "reference_slots.1"),
    ({"source": "elsewhere"}, "source: unknown key"),
])
def test_numbers_are_finite_and_the_faulty_item_is_named(data, key):
    with pytest.raises(PolicyError, match=f"<policy mapping>: {key}"):
        load_policy(data)


def test_every_fault_is_named_at_once_and_keywords_are_checked_too(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("max_rescans: -1\nposition: middle\ncooldown_s: soon\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = str(info.value)
    for key in ("max_rescans", "position", "cooldown_s"):
        assert f"{path}: {key}: " in message, message
    with pytest.raises(PolicyError, match="<policy>: user: String should have"):
        AgentPolicy(user="")
    assert AgentPolicy(source="a") == AgentPolicy(source="b")  # where it came from is no part
