"""Optional HMAC signatures of bundles: with a key, an unsigned or edited bundle is refused."""

from __future__ import annotations

import json
import shutil

import pytest

from pbi_bluesky.models import BundleError, load_bundle, save_bundle


@pytest.fixture()
def bundle(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PBI_MODEL_KEY", "beamline-secret")
    save_bundle(tiny_model, tmp_path / "signed")
    return tmp_path / "signed"


def test_a_signed_bundle_loads_and_says_so(bundle):
    assert (bundle / "model.json.hmac").is_file()
    model = load_bundle(bundle)
    assert model.bundle_info["signature"] == "hmac-sha256 verified"


def test_an_edited_model_json_is_refused_even_with_matching_sha256s(bundle):
    doc = json.loads((bundle / "model.json").read_text())
    doc["alpha"] = 0.5  # rewrites model.json; the file hashes inside stay valid
    (bundle / "model.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="does not match its signature"):
        load_bundle(bundle)


@pytest.mark.parametrize("change", ["unsigned", "other key"])
def test_unsigned_or_foreign_bundles_are_refused_when_a_key_is_set(bundle, tmp_path,
                                                                     monkeypatch, change):
    target = tmp_path / "copy"
    shutil.copytree(bundle, target)
    if change == "unsigned":
        (target / "model.json.hmac").unlink()
        needle = "unsigned bundle is refused"
    else:
        monkeypatch.setenv("PBI_MODEL_KEY", "another-key")
        needle = "does not match its signature"
    with pytest.raises(BundleError, match=needle):
        load_bundle(target)


def test_without_a_key_nothing_is_checked(bundle, monkeypatch):
    monkeypatch.delenv("PBI_MODEL_KEY")
    (bundle / "model.json.hmac").write_text("garbage\n")
    assert load_bundle(bundle).bundle_info["signature"].startswith("none")
