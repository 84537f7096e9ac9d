"""The IOC's command line: the standard PV names, shared defaults, geometry files."""

from __future__ import annotations

import numpy as np
import pytest

from sim_iocs.config import SIM_DEFAULTS
from sim_iocs.saxs_beamline import _parser, build_ioc, make_instrument, write_geometry

_RBV = "(+RBV)"


def _names(spec: str) -> list[str]:
    """'A B(+RBV)' -> ['A', 'B', 'B_RBV']."""
    out = []
    for item in spec.split():
        if item.endswith(_RBV):
            base = item[: -len(_RBV)]
            out += [base, f"{base}_RBV"]
        else:
            out.append(item)
    return out


# The PV sets issue 10 lists (measured against ophyd 1.11.2 and ophyd-async 0.21.3)
STOCK_OPHYD = {
    "cam1:": _names("Acquire(+RBV) AcquireTime(+RBV) AcquirePeriod(+RBV) ArrayCallbacks(+RBV) "
                    "ArrayCounter(+RBV) ImageMode(+RBV) TriggerMode(+RBV) NumImages(+RBV) "
                    "NumExposures(+RBV) ArraySizeX_RBV ArraySizeY_RBV Manufacturer_RBV "
                    "Model_RBV PortName_RBV"),
    "HDF1:": _names("ArrayCounter(+RBV) AutoIncrement(+RBV) AutoSave(+RBV) "
                    "BlockingCallbacks(+RBV) Capture(+RBV) EnableCallbacks(+RBV) FileName(+RBV) "
                    "FilePath(+RBV) FileTemplate(+RBV) FileNumber(+RBV) FileWriteMode(+RBV) "
                    "NDArrayPort(+RBV) NumCapture(+RBV) ArraySize0_RBV ArraySize1_RBV "
                    "ArraySize2_RBV FilePathExists_RBV PluginType_RBV PortName_RBV"),
    "image1:": _names("ArrayData ArraySize0_RBV ArraySize1_RBV ArraySize2_RBV NDimensions_RBV "
                      "BlockingCallbacks(+RBV) EnableCallbacks(+RBV) NDArrayPort(+RBV) "
                      "PluginType_RBV PortName_RBV"),
}
OPHYD_ASYNC = {
    "cam1:": _names("ADCoreVersion_RBV DriverVersion_RBV Manufacturer_RBV Model_RBV "
                    "SerialNumber_RBV SDKVersion_RBV FirmwareVersion_RBV PortName_RBV "
                    "Acquire(+RBV) AcquireTime(+RBV) AcquirePeriod(+RBV) ArrayCounter(+RBV) "
                    "ImageMode(+RBV) NumImages(+RBV) TriggerMode(+RBV) Armed ArraySize0_RBV "
                    "ArraySize1_RBV ArraySize2_RBV ArraySizeX_RBV ArraySizeY_RBV "
                    "ArraySizeZ_RBV ColorMode_RBV DataType_RBV DetectorState_RBV "
                    "NDAttributesFile UniqueId_RBV WaitForPlugins"),
    "HDF1:": _names("ArraySize0 ArraySize1 AutoIncrement FileNumber CreateDirectory FlushNow "
                    "NDAttributesFile ArrayCounter(+RBV) Capture(+RBV) ChunkSizeAuto(+RBV) "
                    "Compression(+RBV) EnableCallbacks(+RBV) FileName(+RBV) FilePath(+RBV) "
                    "FileTemplate(+RBV) XMLFileName(+RBV) FileWriteMode(+RBV) LazyOpen(+RBV) "
                    "PositionMode(+RBV) SWMRMode(+RBV) NDArrayAddress(+RBV) NDArrayPort(+RBV) "
                    "NumCapture(+RBV) NumExtraDims(+RBV) NumFramesChunks(+RBV) QueueSize(+RBV) "
                    "ADCoreVersion_RBV DriverVersion_RBV ArraySize2_RBV ArraySizeX_RBV "
                    "ArraySizeY_RBV ArraySizeZ_RBV ColorMode_RBV DataType_RBV "
                    "FullFileName_RBV FilePathExists_RBV NumCaptured_RBV UniqueId_RBV"),
}
BEAMLINE = ["changer", "mon:I0", "mon:Transmission", "sim:Ready", "sim:Shutter", "sim:Flux",
            "sim:BeamDump", "sim:HotPixels", "sim:BeamCenterDrift", "sim:DetectorTimeout"]


@pytest.fixture(scope="module")
def listed() -> list[str]:
    """Every PV name of an IOC with prefix X: (what ``--list-pvs`` logs before serving)."""
    return sorted(build_ioc("X:", detector="Pilatus300k").pvdb)


@pytest.mark.parametrize("client", ["stock ophyd", "ophyd-async"])
def test_list_pvs_has_every_standard_name(listed, client):
    sets = STOCK_OPHYD if client == "stock ophyd" else OPHYD_ASYNC
    missing = [f"{plugin}{name}" for plugin, names in sets.items() for name in names
               if f"X:{plugin}{name}" not in listed]
    assert not missing, f"{client} needs PVs the IOC does not serve: {missing}"


def test_list_pvs_beamline_and_simulation_namespaces(listed):
    assert all(p.startswith("X:") for p in listed)
    missing = [p for p in BEAMLINE if f"X:{p}" not in listed]
    assert not missing
    # only the standard templates, the changer record, mon: and sim: - no custom names
    tops = {p[2:].split(":", 1)[0] for p in listed if ":" in p[2:]}
    assert tops == {"cam1", "image1", "HDF1", "mon", "sim"}
    assert not [p for p in listed if "tray" in p or "PONI" in p or p.startswith("X:beam:")]


def test_ioc_and_pbi_iocs_share_the_defaults(tmp_path, monkeypatch):
    """``pbi sim iocs`` hands the IOC the same defaults as ``python -m
    sim_iocs.saxs_beamline`` (the argv it serves with is captured; serving itself is
    tested with real processes in tests/cli/test_newcomer.py)."""
    from typer.testing import CliRunner

    import pbi_bluesky.demos.iocs
    from pbi_bluesky.cli import app

    args = _parser().parse_args([])
    assert (args.prefix, args.detector, tuple(args.interfaces), args.data_root) == (
        SIM_DEFAULTS.prefix, "Pilatus1M", ("127.0.0.1",), SIM_DEFAULTS.data_root)
    assert _parser().parse_args(["--print-pvs"]).list_pvs  # the old flag still works
    served: list[list[str]] = []
    monkeypatch.setattr(pbi_bluesky.demos.iocs, "serve_sim_beamline", served.append)
    result = CliRunner().invoke(app, ["sim", "iocs", "--detector", "Pilatus300k",
                                      "--data-root", str(tmp_path), "--list-pvs"])
    assert result.exit_code == 0, result.output
    (argv,) = served
    given = _parser().parse_args(argv)
    assert (given.prefix, tuple(given.interfaces), given.detector, given.data_root,
            given.list_pvs) == (SIM_DEFAULTS.prefix, SIM_DEFAULTS.interfaces, "Pilatus300k",
                                tmp_path, True)


def test_served_on_loopback_only(sim_ioc):
    log = sim_ioc.log_path.read_text()
    assert "Listening on 127.0.0.1:" in log
    assert "0.0.0.0" not in log


def test_geometry_files_written_at_start_up(sim_ioc):
    import fabio
    import pyFAI

    inst = make_instrument(sim_ioc.detector)
    ai = pyFAI.load(str(sim_ioc.poni_path))
    ref = inst.geometry
    for attr in ("dist", "poni1", "poni2", "rot1", "rot2", "rot3", "wavelength"):
        assert getattr(ai, attr) == pytest.approx(getattr(ref, attr), rel=1e-9, abs=1e-12)
    assert ai.detector.shape == inst.shape
    mask = fabio.open(str(sim_ioc.mask_path)).data
    assert mask.shape == inst.shape
    np.testing.assert_array_equal(mask.astype(bool), inst.mask)
    assert 0 < mask.mean() < 0.2  # gaps + beamstop, not everything


def test_write_geometry_npy_and_bad_suffix(tmp_path):
    inst = make_instrument("Pilatus300k")
    write_geometry(inst, tmp_path / "g.poni", tmp_path / "m.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy").astype(bool), inst.mask)
    assert "Distance" in (tmp_path / "g.poni").read_text()
    with pytest.raises(ValueError, match=r"\.edf or \.npy"):
        write_geometry(inst, mask_out=tmp_path / "m.tif")


def test_fixture_reports_ioc_startup_failure_with_its_log(tmp_path):
    from tests.beamline_fixtures import start_sim_ioc

    with pytest.raises(RuntimeError, match="(?s)exited with code 2.*invalid choice"):
        start_sim_ioc(tmp_path, detector="Eiger9M")
