"""The frame core shared by the live scorer and the bus workers: batch-invariant scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pbi_bluesky.scoring.engine import FrameInput, FrameScorer
from pbi_bluesky.scoring.frames import AssetRegistry
from pbi_bluesky.scoring.streams import FrameParts, Roles
from pbi_bluesky.simulate import (
    PS_PMMA,
    apply_anomaly,
    expected_dark,
    nominal_state,
    render_frame,
)


@pytest.fixture(scope="module")
def frames(instrument, tmp_path_factory):
    path = tmp_path_factory.mktemp("poni") / "geometry.poni"
    instrument.write_poni(path)
    start = {"uid": "raw", "geometry": path.read_text(), "thickness_cm": 0.1,
             "composition": "50:50"}
    rng = np.random.default_rng(31)
    roles = Roles("det_image", "beam_i0", "beam_transmission")
    out = []
    for seq in range(1, 8):
        state = nominal_state(PS_PMMA, "50:50", rng)
        if seq % 3 == 0:
            state = apply_anomaly(state, "contamination", 0.8, rng)
        shot = render_frame(state, instrument, rng)
        parts = FrameParts(seq, {"det_image": ("inline", shot.frame),
                                 "beam_i0": ("inline", shot.monitor),
                                 "beam_transmission": ("inline", shot.transmission)})
        out.append(FrameInput("raw", start, roles, parts, AssetRegistry(), background=None))
    return out


def test_a_frame_scores_the_same_in_any_batch(tiny_model, instrument, frames):
    """The same frame, scored alone or beside others, gets the same score to 1e-12 (the
    model is padded to a fixed minimum batch; without it float32 kernels differ ~1e-6)."""
    core = FrameScorer(tiny_model, mask=instrument.mask, dark=expected_dark(instrument),
                       npt=instrument.npt)
    whole = {o.result.raw_seq_num: o.result for o in core.process(frames)}
    alone = {}
    for size in (1, 2, 3):
        for i in range(0, len(frames), size):
            for o in core.process(frames[i:i + size]):
                alone.setdefault(size, {})[o.result.raw_seq_num] = o.result
    assert {r.status for r in whole.values()} == {"scored"}
    for size, results in alone.items():
        for seq, r in results.items():
            assert abs(r.score - whole[seq].score) <= 1e-12, (size, seq)
            assert r.p_value == whole[seq].p_value and r.is_anomaly == whole[seq].is_anomaly


def test_a_bad_frame_fails_alone_with_its_reason(tiny_model, instrument, frames):
    core = FrameScorer(tiny_model, mask=instrument.mask, dark=expected_dark(instrument),
                       npt=instrument.npt)
    bad = FrameInput(frames[0].raw_uid, frames[0].start, frames[0].roles,
                     FrameParts(99, {**frames[0].parts.values,
                                     "beam_transmission": ("refused", "too big for the bus")}),
                     frames[0].assets, background=None)
    outcomes = core.process([frames[0], bad, frames[1]])
    assert [o.result.status for o in outcomes] == ["scored", "failed", "scored"]
    assert "too big for the bus" in outcomes[1].result.reason


def test_analysis_documents_follow_the_event_model_schema(tiny_model, instrument, frames):
    """Events are composed without event_model's per-event jsonschema check (8 ms of CPU
    per frame); the layout is checked here instead, with event_model's own validators."""
    from event_model import DocumentNames, schema_validators

    core = FrameScorer(tiny_model, mask=instrument.mask, dark=expected_dark(instrument),
                       npt=instrument.npt)
    outcomes = core.process(frames[:3])
    run = core.begin_analysis(frames[0].start)
    docs = [("start", run.bundle.start_doc), ("descriptor", run.verdicts.descriptor_doc),
            ("descriptor", run.explanations.descriptor_doc)]
    for o in outcomes:
        docs.append(("event", run.record(o.result, o.resampled)))
    docs.append(("event", run.record(core.base_result(frames[0], "failed", "why"), None)))
    docs.append(("event", run.explained(outcomes[0].result, "explained",
                                        {"peak": {"value": 1.0, "z": 2.0}})))
    docs.append(("stop", run.stop_doc(4, {"exit_status": "success"}, 0)))
    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(
            {k: v for k, v in doc.items() if k != "pbi_summary"})
    assert docs[-1][1]["pbi_summary"]["accounted"] == 4


@pytest.fixture(scope="module")
def stream_file(instrument, tmp_path_factory):
    """Seven frames in an areaDetector-layout HDF5 file, I0 and transmission beside them
    as NDAttribute datasets; the fourth frame's readings are bad (zero I0, NaN T)."""
    import h5py

    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(32)
    shots = [render_frame(nominal_state(PS_PMMA, "50:50", rng), instrument, rng)
             for _ in range(7)]
    i0 = [s.monitor for s in shots]
    trans = [s.transmission for s in shots]
    i0[3], trans[4] = 0.0, float("nan")
    with h5py.File(root / "scan.h5", "w") as fh:
        fh.create_dataset("/entry/data/data", data=np.stack([s.frame for s in shots]),
                          chunks=(1, *instrument.shape))
        fh["/entry/instrument/NDAttributes/I0"] = np.array(i0)
        fh["/entry/instrument/NDAttributes/T"] = np.array(trans)
        fh["/entry/other/small"] = np.zeros((8, 8, 8), dtype=np.int32)
    return root


def _stream_frames(stream_file, instrument, indices, image_resource="img", bad_params=None):
    path = stream_file / "scan.h5"
    start = {"uid": "raw", "geometry": None, "thickness_cm": 0.1, "composition": "50:50"}
    assets = AssetRegistry((str(stream_file),))
    for uid, dataset in (("img", "/entry/data/data"), ("i0", "/entry/instrument/NDAttributes/I0"),
                         ("t", "/entry/instrument/NDAttributes/T"),
                         ("small", "/entry/other/small")):
        assets.add_stream_resource({"uid": uid, "uri": f"file://localhost{path}",
                                    "mimetype": "application/x-hdf5",
                                    "parameters": {"dataset": dataset}})
    assets.add_stream_resource({"uid": "bad", "uri": f"file://localhost{path}",
                                "mimetype": "application/x-hdf5", "parameters": bad_params})
    roles = Roles("det_image", "beam_i0", "beam_transmission")
    out = []
    for seq, index in enumerate(indices, start=1):
        resource = image_resource if seq == 3 else "img"
        parts = FrameParts(seq, {"det_image": ("stream", (resource, index)),
                                 "beam_i0": ("stream", ("i0", index)),
                                 "beam_transmission": ("stream", ("t", index))})
        out.append(FrameInput("raw", start, roles, parts, assets, background=None))
    return out


@pytest.mark.parametrize("bad", ["none", "frame-not-written", "wrong-shape"])
def test_a_batch_read_from_hdf5_equals_frame_by_frame_reads(tiny_model, instrument,
                                                            stream_file, tmp_path, bad):
    """One batch (files opened once, neighbouring frames read in one go, reduced by the
    batch integrator) gives each frame exactly the profile and score it gets alone; bad
    frames (zero I0, NaN transmission, and per case a frame never written or of another
    shape) fail alone with their reason."""
    poni = tmp_path / "g.poni"
    instrument.write_poni(poni)
    core = FrameScorer(tiny_model, poni=poni, mask=instrument.mask,
                       dark=expected_dark(instrument), npt=instrument.npt,
                       data_roots=[stream_file])
    indices = [0, 1, 2, 3, 4, 5, 6, 9] if bad == "frame-not-written" else list(range(7))
    image = "small" if bad == "wrong-shape" else "img"
    whole = core.process(_stream_frames(stream_file, instrument, indices, image))
    alone = [core.process([f])[0]
             for f in _stream_frames(stream_file, instrument, indices, image)]
    expected = {4: "I0 reading 0.0 is not a positive number",
                5: "transmission nan is not in"}
    if bad == "frame-not-written":
        expected[8] = "holds 7 entries, index 9 asked"
    if bad == "wrong-shape":
        expected[3] = "does not match detector shape"
    for w, a in zip(whole, alone, strict=True):
        seq = w.result.raw_seq_num
        assert w.result.status == a.result.status == ("failed" if seq in expected else
                                                       "scored"), (seq, w.result.reason)
        if seq in expected:
            assert expected[seq] in w.result.reason and w.result.reason == a.result.reason
            continue
        assert np.array_equal(w.profile.intensity, a.profile.intensity, equal_nan=True)
        assert np.array_equal(w.profile.sigma, a.profile.sigma, equal_nan=True)
        assert w.result.score == a.result.score and w.result.p_value == a.result.p_value


@pytest.mark.parametrize(("params", "reason"), [
    ({"dataset": ["/entry/data/data"]}, "is not a string"),
    ({"dataset": {"name": "/entry/data/data"}}, "is not a string"),
    ({"dataset": 5}, "is not a string"),
    (["/entry/data/data"], "are not a mapping"),
    ("/entry/data/data", "are not a mapping"),
])
def test_a_malformed_stream_resource_fails_its_frames_not_the_batch(
        tiny_model, instrument, stream_file, tmp_path, params, reason):
    """A StreamResource whose dataset is not a string (unhashable ones once escaped the
    batch read-ahead and lost the whole batch): its frame fails with the reason, the rest
    of the batch is scored."""
    poni = tmp_path / "g.poni"
    instrument.write_poni(poni)
    core = FrameScorer(tiny_model, poni=poni, mask=instrument.mask,
                       dark=expected_dark(instrument), npt=instrument.npt,
                       data_roots=[stream_file])
    frames = _stream_frames(stream_file, instrument, [0, 1, 2], "bad", bad_params=params)
    outcomes = core.process(frames)
    assert [o.result.raw_seq_num for o in outcomes] == [1, 2, 3]
    by_seq = {o.result.raw_seq_num: o.result for o in outcomes}
    assert by_seq[3].status == "failed" and reason in by_seq[3].reason
    assert by_seq[1].status == by_seq[2].status == "scored"


@pytest.fixture(scope="module")
def settings(instrument, tmp_path_factory):
    """The settings of a beamline whose keys, geometry, mask and dark are those of the
    ``frames`` above (the model is passed as an override: no bundle file)."""
    from pbi_bluesky.config import load_config

    root = tmp_path_factory.mktemp("settings")
    instrument.write_poni(root / "geometry.poni")
    np.save(root / "mask.npy", instrument.mask.astype(np.uint8))
    np.save(root / "dark.npy", expected_dark(instrument))
    sim = Path(__file__).resolve().parents[2] / "profiles" / "profile_saxs" / "beamline.yaml"
    return load_config(sim).with_overrides(
        detector={"name": "det"}, monitors={"i0_name": "beam_i0",
                                            "transmission_name": "beam_transmission"},
        geometry={"poni": str(root / "geometry.poni"), "mask": str(root / "mask.npy"),
                  "dark": str(root / "dark.npy")},
        scorer={"npt": instrument.npt, "data_roots": [str(root)]})


def test_a_scorer_from_the_settings_scores_as_one_given_each_setting(tiny_model, instrument,
                                                                     frames, settings):
    core = FrameScorer.from_settings(settings, model=tiny_model)
    assert core.keys == {"image_key": "det_image", "monitor_key": "beam_i0",
                         "transmission_key": "beam_transmission"}
    assert core.data_roots == ("/tmp/pbi_sim_data", settings.scorer.data_roots[0])
    assert FrameScorer.settings_kwargs(settings, mode="async")["image_key"] == "det"
    explicit = FrameScorer(tiny_model, poni=settings.geometry.poni, mask=instrument.mask,
                           dark=expected_dark(instrument), npt=instrument.npt)
    for a, b in zip(core.process(frames), explicit.process(frames), strict=True):
        assert a.result.status == b.result.status == "scored"
        assert a.result.score == b.result.score and a.result.p_value == b.result.p_value
    no_t = settings.with_overrides(monitors={"transmission": None})
    kwargs = FrameScorer.settings_kwargs(no_t)
    assert kwargs["transmission_key"] is None and kwargs["transmission_required"] is False


def test_reading_is_apart_from_scoring(frames):
    """A frame is read and checked without a model or a reducer; what cannot be reduced
    fails there with its reason."""
    from pbi_bluesky.scoring.frames import FrameError
    from pbi_bluesky.scoring.reader import FrameReader

    reader = FrameReader(["50:50"])
    reading = reader.read(frames[0])
    assert reading.geometry == frames[0].start["geometry"] and reading.i0 > 0
    assert 0 < reading.transmission <= 1.5 and reading.thickness == 0.1
    assert reading.image.shape == frames[0].parts.values["det_image"][1].shape
    with pytest.raises(FrameError, match="expected recipe '50:50' unknown to the model"):
        FrameReader(["25:75"]).read(frames[0])
