"""Image reading and 1D profile files (ASCII, NXcanSAS)."""

from __future__ import annotations

import fabio
import h5py
import numpy as np
import pytest

from pbi_bluesky.profile import Profile
from pbi_bluesky.reduction import (
    ReductionError,
    as_frame,
    read_ascii,
    read_image,
    read_nxcansas,
    read_profile,
    write_ascii,
    write_nxcansas,
)


@pytest.fixture
def profile():
    q = np.linspace(0.005, 0.3, 64)
    intensity = 1e3 / (1 + (q * 100) ** 2) - 0.5  # negative values allowed after subtraction
    intensity[10] = np.nan  # an empty bin
    sigma = np.sqrt(np.abs(intensity)) * 0.1
    return Profile(q, intensity, sigma, {"sample": "PS-b-PMMA", "units": "1/cm", "T_C": 150.0},
                   {"package": "pbi_bluesky", "npt": 64, "corrections": {"dark": True}})


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 1000, (40, 30)).astype(np.int32)


# -- images ---------------------------------------------------------------------------------
def test_read_tiff_and_edf(tmp_path, image):
    tif = tmp_path / "frame.tif"
    fabio.tifimage.TifImage(data=image).write(str(tif))
    edf = tmp_path / "frame.edf"
    fabio.edfimage.EdfImage(data=image).write(str(edf))
    np.testing.assert_array_equal(read_image(tif), image)
    np.testing.assert_array_equal(read_image(edf), image)
    np.testing.assert_array_equal(as_frame(str(edf)), image)


def test_read_hdf5_default_and_explicit_dataset(tmp_path, image):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as h5:
        h5["entry/data/data"] = np.stack([image, image + 1])
        h5["other/img"] = image * 2
    np.testing.assert_array_equal(read_image(path), image)  # first frame of a 3D stack
    np.testing.assert_array_equal(read_image(f"{path}::/other/img"), image * 2)
    with pytest.raises(ReductionError, match="has no dataset /missing"):
        read_image(f"{path}::/missing")


@pytest.mark.parametrize(
    ("content", "name", "match"),
    [
        (None, "absent.tif", "image file .*absent.tif not found"),
        (b"", "empty.edf", "image file .*empty.edf is empty"),
        (b"this is not an image at all" * 10, "junk.cbf", "could not be read"),
        (b"not hdf5" * 10, "junk.h5", "not a readable HDF5 file"),
    ],
)
def test_read_image_errors(tmp_path, content, name, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ReductionError, match=match):
        read_image(path)


def test_as_frame_rejects_non_2d():
    with pytest.raises(ReductionError, match="frame must be 2D"):
        as_frame(np.zeros(5))


# -- ASCII ----------------------------------------------------------------------------------
def test_ascii_round_trip(tmp_path, profile):
    path = write_ascii(profile, tmp_path / "p.dat")
    text = path.read_text()
    assert "# sample: PS-b-PMMA" in text and "# q_unit: 1/angstrom" in text
    back = read_ascii(path)
    np.testing.assert_allclose(back.q_inv_angstrom, profile.q_inv_angstrom, rtol=1e-9)
    np.testing.assert_allclose(back.intensity, profile.intensity, rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(back.sigma, profile.sigma, rtol=1e-9, equal_nan=True)
    assert back.metadata == profile.metadata
    assert back.provenance == profile.provenance
    assert read_profile(path).npt == profile.npt


@pytest.mark.parametrize(
    "header",
    ["# q_unit: 1/nm\n", "# q(nm^-1)  I  sigma\n", "# Q [1/nm] I dI\n"],
)
def test_ascii_in_inverse_nm_is_converted(tmp_path, header):
    path = tmp_path / "nm.txt"
    path.write_text(header + "0.1 10 1\n0.5 5 0.5\n1.0 2 0.2\n")
    prof = read_ascii(path)
    np.testing.assert_allclose(prof.q_inv_angstrom, [0.01, 0.05, 0.1])
    np.testing.assert_allclose(prof.intensity, [10, 5, 2])


def test_ascii_two_columns_and_csv(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("# q_unit: 1/angstrom\n0.01, 3\n0.02, 2\n")
    prof = read_profile(path)
    np.testing.assert_array_equal(prof.sigma, [0.0, 0.0])
    np.testing.assert_allclose(prof.q_inv_angstrom, [0.01, 0.02])


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "is empty"),
        ("# only a header\n", "is empty"),
        ("q I sigma\n0.1 1 1\n", "non-numeric data row 1"),
        ("0.1 1 1\n0.2 abc 1\n", "non-numeric data row 2"),
        ("0.1\n0.2\n", "2 or 3 columns"),
        ("0.2 1 1\n0.1 1 1\n", "strictly increasing"),
    ],
)
def test_ascii_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.dat"
    path.write_text(content)
    with pytest.raises(ReductionError, match=match):
        read_ascii(path)


def test_read_profile_unknown_extension(tmp_path):
    with pytest.raises(ReductionError, match="unknown profile file extension"):
        read_profile(tmp_path / "x.xyz")


# -- NXcanSAS -------------------------------------------------------------------------------
def test_nxcansas_round_trip_and_layout(tmp_path, profile):
    path = write_nxcansas(profile, tmp_path / "p.h5")
    with h5py.File(path, "r") as h5:
        entry = h5["sasentry01"]
        assert entry.attrs["NX_class"] == "NXentry"
        assert entry.attrs["canSAS_class"] == "SASentry"
        assert entry["definition"][()].decode() == "NXcanSAS"
        data = entry["sasdata01"]
        assert data.attrs["canSAS_class"] == "SASdata"
        assert data.attrs["signal"] == "I" and data.attrs["I_axes"] == "Q"
        assert data["Q"].attrs["units"] == "1/angstrom"
        assert data["I"].attrs["units"] == "1/cm"
        assert data["I"].attrs["uncertainties"] == "Idev"
    back = read_nxcansas(path)
    np.testing.assert_array_equal(back.q_inv_angstrom, profile.q_inv_angstrom)
    np.testing.assert_array_equal(back.intensity, profile.intensity)
    np.testing.assert_array_equal(back.sigma, profile.sigma)
    assert back.metadata == profile.metadata and back.provenance == profile.provenance
    assert read_profile(tmp_path / "p.h5").npt == 64


def test_nxcansas_q_in_inverse_nm(tmp_path, profile):
    path = write_nxcansas(profile, tmp_path / "nm.nxs")
    with h5py.File(path, "r+") as h5:
        q = h5["sasentry01/sasdata01/Q"]
        q[...] = q[()] * 10.0
        q.attrs["units"] = "1/nm"
    back = read_profile(path)
    np.testing.assert_allclose(back.q_inv_angstrom, profile.q_inv_angstrom, rtol=1e-12)


def test_nxcansas_errors(tmp_path):
    with pytest.raises(ReductionError, match="not found"):
        read_nxcansas(tmp_path / "none.h5")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as h5:
        h5["x"] = 1
    with pytest.raises(ReductionError, match="no NXcanSAS SASentry"):
        read_nxcansas(plain)
