"""A catalog of analyses scored by a real (small) model, for the review page's tests."""

from __future__ import annotations

import numpy as np
import pytest

RECIPE = "50:50"


def bump(intensity: np.ndarray, height: float) -> np.ndarray:
    """A curve with a Gaussian bump in the middle of its q range (an anomaly)."""
    x = np.arange(intensity.shape[-1])
    return intensity * (1 + height * np.exp(-((x - x.size * 0.75) / (x.size / 12)) ** 2))


@pytest.fixture(scope="module")
def review_catalog(tiny_model, instrument, tmp_path_factory):
    """(folder, bundle, uids): two flagged runs (a then b, b scoring higher), a normal run
    and a failed analysis in an embedded catalog; the model bundle on disk."""
    from pbi_bluesky.store import embedded_client, runs_container

    root = tmp_path_factory.mktemp("review")
    runs = runs_container(embedded_client(root / "catalog"))
    bundle, uids = fill_catalog(runs, tiny_model, instrument, root)
    return root / "catalog", bundle, uids


def fill_catalog(runs, tiny_model, instrument, root):
    """Write the model bundle under ``root`` and the four runs; returns (bundle, uids)."""
    from pbi_bluesky.models import save_bundle
    from pbi_bluesky.simulate import PS_PMMA, nominal_state, simulate_profile
    from pbi_bluesky.testing.analyses import write_scored_run

    bundle = root / "model"
    save_bundle(tiny_model, bundle)
    info = {"path": str(bundle), "model_sha256": "feedc0de" * 8}
    rng = np.random.default_rng(7)
    intensity, sigma = tiny_model.resample(
        [simulate_profile(nominal_state(PS_PMMA, RECIPE, rng), instrument, rng)
         for _ in range(2)])
    uids = {}
    uids["normal"], _ = write_scored_run(runs, tiny_model, intensity[:1], sigma[:1], RECIPE,
                                         model_info=info, md={"sample": "normal"})
    for name, height in (("a", 0.3), ("b", 0.8)):
        uids[name], _ = write_scored_run(runs, tiny_model, bump(intensity, height), sigma,
                                         RECIPE, model_info=info, md={"sample": name})
    uids["failed"], _ = write_scored_run(runs, tiny_model, intensity[:1], sigma[:1], RECIPE,
                                         model_info=info, md={"sample": "broken"},
                                         fail_reason="no geometry: PONI file missing")
    return bundle, uids
