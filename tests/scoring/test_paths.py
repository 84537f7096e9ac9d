"""Paths named by documents stay inside the configured data roots."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from event_model import compose_run

from pbi_bluesky.live import LiveScorer
from pbi_bluesky.scoring import AssetRegistry, FrameError, PathNotAllowed
from pbi_bluesky.scoring.frames import confine, path_from_uri
from tests.live.docs import feed, stream_run_docs

FRAMES = np.arange(1, 2 * 4 * 4 + 1, dtype=np.int32).reshape(2, 4, 4)
"""Two 4x4 frames, each pixel its own value (the file outside the root holds -FRAMES)."""


@pytest.fixture()
def roots(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    outside = tmp_path / "secret"
    outside.mkdir()
    for folder, sign in ((root, 1), (outside, -1)):  # every pixel of every file differs
        with h5py.File(folder / "f.h5", "w") as fh:
            fh["/entry/data/data"] = sign * FRAMES
    (root / "link.h5").symlink_to(outside / "f.h5")
    return root, outside


def _datum_registry(root_doc: str, resource_path: str, roots):
    reg = AssetRegistry((str(roots[0]),))
    reg.add_resource({"uid": "r1", "spec": "AD_HDF5", "root": root_doc,
                      "resource_path": resource_path, "resource_kwargs": {"frame_per_point": 1},
                      "path_semantics": "posix"})
    reg.add_datum({"datum_id": "r1/0", "resource": "r1", "datum_kwargs": {"point_number": 1}})
    return reg


def test_a_file_inside_the_root_is_read_through_the_ad_handler(roots):
    root, _ = roots
    frame = _datum_registry(str(root), "f.h5", roots).frame_from_datum("r1/0")
    # point_number 1 with one frame per point: the second frame of the file in the root
    np.testing.assert_array_equal(np.asarray(frame), FRAMES[1])


@pytest.mark.parametrize("root_doc, resource_path", [
    ("{root}", "../secret/f.h5"),
    ("", "{outside}/f.h5"),
    ("{outside}", "f.h5"),
    ("{root}", "link.h5"),
    ("/", "etc/passwd"),
], ids=["dotdot", "absolute", "other-root", "symlink-escape", "system-file"])
def test_escapes_are_refused_naming_the_path(roots, root_doc, resource_path):
    root, outside = roots
    fmt = {"root": root, "outside": outside}
    reg = _datum_registry(root_doc.format(**fmt), resource_path.format(**fmt), roots)
    with pytest.raises(PathNotAllowed, match="outside the data roots"):
        reg.frame_from_datum("r1/0")


@pytest.mark.parametrize("uri, needle", [
    ("file://otherhost/data/f.h5", "names host"),
    ("http://example.org/f.h5", "scheme"),
    ("s3://bucket/f.h5", "scheme"),
])
def test_uris_must_be_local_files(uri, needle):
    with pytest.raises(PathNotAllowed, match=needle):
        path_from_uri(uri)


def test_no_roots_means_no_file_is_read(tmp_path):
    with pytest.raises(PathNotAllowed, match="no data roots"):
        confine(tmp_path / "x.h5", ())


def test_an_escape_is_a_failed_record_in_the_scorer(tiny_model, roots):
    root, outside = roots
    scorer = LiveScorer(tiny_model, data_roots=[root])
    try:
        uid, docs = stream_run_docs({"composition": "50:50", "thickness_cm": 0.1,
                                     "geometry": "x"},
                                    f"file://localhost{outside}/f.h5", 2, [4, 4],
                                    attributes={"i0": "/entry/data/data",
                                                "transmission": "/entry/data/data"})
        feed(scorer, docs)
        assert scorer.flush(30)
        results = scorer.channel.results(uid)
        assert [r.status for r in results] == ["failed", "failed"]
        assert all(str(outside) in r.reason and "outside the data roots" in r.reason
                   for r in results)
        assert scorer.channel.summaries[uid]["accounted"] == 2
    finally:
        scorer.close()


def test_missing_and_corrupt_files_are_reasons_not_crashes(tmp_path):
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(os.urandom(2048))
    reg = AssetRegistry((str(tmp_path),))
    bundle = compose_run()
    for name in ("missing.h5", "corrupt.h5"):
        res = bundle.compose_stream_resource(mimetype="application/x-hdf5",
                                             uri=f"file://localhost{tmp_path / name}",
                                             data_key="img", parameters={})
        reg.add_stream_resource(res.stream_resource_doc)
        with pytest.raises(FrameError):
            reg.value_from_stream(res.stream_resource_doc["uid"], 0)
