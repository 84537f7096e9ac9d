"""Data-root confinement holds inside a file too (issue 20): a frame file that lies in a
data root but takes its data from elsewhere (HDF5 external link, virtual dataset, external
storage) is refused with a clear error, on every read path."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pbi_bluesky.reduction import ReductionError, read_hdf5_frame

DATASET = "/entry/data/data"


@pytest.fixture
def files(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    secret = outside / "secret.h5"
    frames = np.arange(2 * 4 * 4, dtype=np.int32).reshape(2, 4, 4)
    with h5py.File(secret, "w") as fh:
        fh[DATASET] = frames
    raw = outside / "raw.bin"
    frames.tofile(raw)
    made = {}
    with h5py.File(root / "plain.h5", "w") as fh:
        fh[DATASET] = frames
    made["plain"] = root / "plain.h5"
    with h5py.File(root / "link.h5", "w") as fh:
        fh.create_group("/entry/data")
        fh[DATASET] = h5py.ExternalLink(str(secret), DATASET)
    made["external link"] = root / "link.h5"
    with h5py.File(root / "grouplink.h5", "w") as fh:  # a parent group links out
        fh["/entry"] = h5py.ExternalLink(str(secret), "/entry")
    made["external link"] = root / "link.h5"
    made["group link"] = root / "grouplink.h5"
    layout = h5py.VirtualLayout(shape=frames.shape, dtype=frames.dtype)
    layout[:] = h5py.VirtualSource(str(secret), DATASET, shape=frames.shape)
    with h5py.File(root / "virtual.h5", "w") as fh:
        fh.create_group("/entry/data").create_virtual_dataset("data", layout)
    made["virtual"] = root / "virtual.h5"
    with h5py.File(root / "external.h5", "w") as fh:
        fh.create_group("/entry/data").create_dataset(
            "data", shape=frames.shape, dtype=frames.dtype,
            external=[(str(raw), 0, frames.nbytes)])
    made["external storage"] = root / "external.h5"
    return root, made, frames


@pytest.mark.parametrize("kind, why", [
    ("external link", "external link"), ("group link", "external link"),
    ("virtual", "virtual dataset"), ("external storage", "external files"),
])
def test_hdf5_frames_from_outside_the_file_are_refused(files, kind, why):
    root, made, frames = files
    # h5py alone reads the outside data through each of them (what was open before)
    with h5py.File(made[kind], "r") as fh:
        np.testing.assert_array_equal(fh[DATASET][1], frames[1])
    with pytest.raises(ReductionError, match=why):
        read_hdf5_frame(made[kind], DATASET, 1)


@pytest.mark.parametrize("kind", ["external link", "virtual", "external storage"])
def test_the_scorer_refuses_them_on_both_read_paths(files, kind):
    from pbi_bluesky.scoring.frames import AssetRegistry, FrameError
    from pbi_bluesky.scoring.reads import ReadCache

    root, made, frames = files
    registry = AssetRegistry((str(root),))
    for name in ("plain", kind):
        registry.add_resource({"uid": name, "spec": "AD_HDF5", "root": str(root),
                               "resource_path": made[name].name,
                               "resource_kwargs": {"frame_per_point": 1}})
        registry.add_datum({"datum_id": f"{name}/1", "resource": name,
                            "datum_kwargs": {"point_number": 1}})
    # the plain file reads, through the handler and through the batch cache
    np.testing.assert_array_equal(registry.frame_from_datum("plain/1"), frames[1])
    with ReadCache() as cache:
        np.testing.assert_array_equal(registry.frame_from_datum("plain/1", cache), frames[1])
        with pytest.raises(FrameError, match="refused"):
            registry.frame_from_datum(f"{kind}/1", cache)
    with pytest.raises(FrameError, match="refused"):
        registry.frame_from_datum(f"{kind}/1")
