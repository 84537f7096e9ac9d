"""Batch reads: files opened once, frames read into reused memory, rows as one stack."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pbi_bluesky.reduction import ReductionError, read_hdf5_frame
from pbi_bluesky.scoring.reads import FrameBuffers, ReadCache, read_rows, stack_rows

SHAPE = (24, 20)
DATASET = "/entry/data/data"


def _write(path, layout: str, n: int = 10, dtype: str = "<i4") -> np.ndarray:
    frames = np.random.default_rng(3).integers(0, 1000, (n, *SHAPE)).astype(dtype)
    kwargs = {"one-chunk-per-frame": {"chunks": (1, *SHAPE)},
              "compressed": {"chunks": (1, *SHAPE), "compression": "gzip"},
              "two-frames-per-chunk": {"chunks": (2, *SHAPE)},
              "contiguous": {},
              "big-endian": {"chunks": (1, *SHAPE)}}[layout]
    with h5py.File(path, "w") as fh:
        fh.create_dataset(DATASET, data=frames, **kwargs)
        fh["/entry/instrument/NDAttributes/I0"] = np.arange(n, dtype=float) + 1.0
    return frames


@pytest.mark.parametrize("layout", ["one-chunk-per-frame", "compressed",
                                    "two-frames-per-chunk", "contiguous", "big-endian"])
def test_rows_equal_the_frame_by_frame_reader_for_every_layout(tmp_path, layout):
    path = tmp_path / "f.h5"
    frames = _write(path, layout, dtype=">i4" if layout == "big-endian" else "<i4")
    wanted = [0, 1, 2, 5, 6, 9]
    with ReadCache(FrameBuffers()) as cache:
        read_rows(cache, path, DATASET, wanted)
        for i in wanted:
            row = cache.entry(path, DATASET, i)
            assert np.array_equal(row, read_hdf5_frame(path, DATASET, i))
            assert np.array_equal(row, frames[i])
        runs = [[cache.rows[(path, DATASET, i)] for i in run] for run in ([0, 1, 2], [5, 6])]
        stacked = [stack_rows(rows) for rows in runs]
        assert all(np.shares_memory(s, rows[0]) for s, rows in zip(stacked, runs, strict=True))
        assert np.array_equal(stacked[0], frames[0:3])
        # rows out of memory order are not one stack: copied, still right
        mixed = stack_rows([runs[1][0], runs[0][2]])
        assert not np.shares_memory(mixed, runs[0][2])
        assert np.array_equal(mixed, frames[[5, 2]])


def test_attributes_are_read_once_and_out_of_range_entries_fail_with_sizes(tmp_path):
    path = tmp_path / "f.h5"
    _write(path, "one-chunk-per-frame")
    with ReadCache() as cache:
        read_rows(cache, path, DATASET, [8, 9, 10, 11])  # 10, 11 do not exist (yet)
        assert (path, DATASET, 10) not in cache.rows
        with pytest.raises(ReductionError, match="holds 10 entries, index 10 asked"):
            cache.entry(path, DATASET, 10)
        attr = "/entry/instrument/NDAttributes/I0"
        assert float(cache.entry(path, attr, 3)) == 4.0
        assert cache.node(path, attr) is cache.node(path, attr)
        with pytest.raises(ReductionError, match="holds 10 entries, index 12 asked"):
            cache.entry(path, attr, 12)
    assert not cache.rows and not cache.locations  # closed: nothing kept


def test_buffers_are_reused_by_the_next_batch_not_within_one(tmp_path):
    buffers = FrameBuffers()
    first = buffers.take(4, SHAPE, "<i4")
    second = buffers.take(4, SHAPE, "<i4")
    assert not np.shares_memory(first, second)
    buffers.reset()
    again = buffers.take(4, SHAPE, "<i4")
    assert np.shares_memory(again, first)
    big = FrameBuffers(keep_bytes=0)
    a = big.take(2, SHAPE, "<i4")
    big.reset()
    assert not np.shares_memory(big.take(2, SHAPE, "<i4"), a)  # not kept beyond its bound


def test_a_file_held_by_an_swmr_writer_is_read_batch_after_batch(tmp_path):
    """As the areaDetector HDF5 plugin writes with SWMRMode on: the writer keeps the file
    open and appends; each batch sees the frames flushed before it."""
    path = tmp_path / "swmr.h5"
    frames = np.random.default_rng(4).integers(0, 1000, (5, *SHAPE)).astype("<i4")
    with h5py.File(path, "w", libver="latest", locking=False) as writer:
        data = writer.create_dataset(DATASET, shape=(0, *SHAPE), maxshape=(None, *SHAPE),
                                     chunks=(1, *SHAPE), dtype="<i4")
        writer.swmr_mode = True
        buffers = FrameBuffers()
        for lo, hi in ((0, 3), (3, 5)):
            data.resize(hi, axis=0)
            data[lo:hi] = frames[lo:hi]
            data.flush()
            with ReadCache(buffers) as cache:
                read_rows(cache, path, DATASET, list(range(lo, hi)))
                assert cache.node(path, DATASET).file.swmr_mode
                for i in range(lo, hi):
                    assert np.array_equal(cache.rows[(path, DATASET, i)], frames[i])


@pytest.mark.parametrize("frame_per_point", [1, 2])
def test_datum_frames_read_ahead_equal_the_area_detector_handler(tmp_path, frame_per_point):
    """Resource/Datum frames (stock ophyd, spec AD_HDF5): the batch read takes the frame
    where the AD_HDF5 handler slices it, and gets the handler's numbers."""
    from pbi_bluesky.scoring.frames import AssetRegistry

    _write(tmp_path / "f.h5", "one-chunk-per-frame")
    reg = AssetRegistry((str(tmp_path),))
    reg.add_resource({"uid": "r", "spec": "AD_HDF5", "root": str(tmp_path),
                      "resource_path": "f.h5",
                      "resource_kwargs": {"frame_per_point": frame_per_point}})
    points = range(10 // frame_per_point)
    for p in points:
        reg.add_datum({"datum_id": f"r/{p}", "resource": "r",
                       "datum_kwargs": {"point_number": p}})
    with ReadCache(FrameBuffers()) as cache:
        reg.prefetch([("datum", f"r/{p}") for p in points], cache)
        assert len(cache.rows) == len(points)
        for p in points:
            ahead = reg.frame_from_datum(f"r/{p}", cache)
            assert any(ahead is row for row in cache.rows.values())
            assert np.array_equal(ahead, reg.frame_from_datum(f"r/{p}"))  # the handler


def test_a_frame_whose_chunk_is_not_stored_yet_fails_instead_of_reading_zeros(tmp_path):
    """An SWMR reader can see the dataset extended before the writer stored the frame;
    HDF5 would return the fill value (zeros) for it, which must never be scored."""
    path = tmp_path / "f.h5"
    frames = np.random.default_rng(5).integers(1, 1000, (3, *SHAPE)).astype("<i4")
    with h5py.File(path, "w") as fh:
        data = fh.create_dataset(DATASET, shape=(5, *SHAPE), chunks=(1, *SHAPE), dtype="<i4")
        data[:3] = frames
    with ReadCache(FrameBuffers()) as cache:
        read_rows(cache, path, DATASET, [1, 2, 3, 4])
        assert {k[2] for k in cache.rows} == {1, 2}
        assert np.array_equal(cache.entry(path, DATASET, 2), frames[2])
        with pytest.raises(ReductionError, match="frame 3 is not written yet"):
            cache.entry(path, DATASET, 3)
    with pytest.raises(ReductionError, match="frame 4 is not written yet"):
        read_hdf5_frame(path, DATASET, 4)


def test_a_datum_frame_not_read_ahead_is_read_through_the_batch_file(tmp_path):
    """With a batch cache, a datum's frame missing from the read-ahead is read from the
    file the batch already holds open (an area-detector handler would open a second,
    SWMR, handle on it), and a point beyond the file fails with the sizes."""
    from pbi_bluesky.scoring.frames import AssetRegistry, FrameError

    frames = _write(tmp_path / "f.h5", "one-chunk-per-frame")
    reg = AssetRegistry((str(tmp_path),))
    reg.add_resource({"uid": "r", "spec": "AD_HDF5_SWMR", "root": str(tmp_path),
                      "resource_path": "f.h5", "resource_kwargs": {"frame_per_point": 1}})
    for p in (4, 12):
        reg.add_datum({"datum_id": f"r/{p}", "resource": "r",
                       "datum_kwargs": {"point_number": p}})
    with ReadCache(FrameBuffers()) as cache:
        frame = reg.frame_from_datum("r/4", cache)
        assert np.array_equal(frame, frames[4])
        assert list(cache._files) == [tmp_path / "f.h5"]
        with pytest.raises(FrameError, match="holds 10 entries, index 12 asked"):
            reg.frame_from_datum("r/12", cache)
