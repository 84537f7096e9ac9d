"""A simulated Pilatus areaDetector IOC: ``cam1:``, ``image1:`` and ``HDF1:`` composed.

The templates live in :mod:`sim_iocs.ad_driver` (NDArrayBase, ADBase, ADPilatus),
:mod:`sim_iocs.ad_plugins` (NDPluginBase, NDStdArrays, NDFile) and :mod:`sim_iocs.ad_hdf5`
(NDFileHDF5). This module wires them the way an ADPilatus ``st.cmd`` would: the driver's
asyn port ``PIL`` feeds the ``IMAGE1`` and ``HDF1`` plugins, and the frames come from a
:class:`~sim_iocs.ad_driver.FrameSource`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from caproto.server import PVGroup, SubGroup

from sim_iocs.ad_driver import DEFAULT_ATTRIBUTES_FILE, FrameSource, PilatusDriverGroup
from sim_iocs.ad_hdf5 import NDFileHDF5Group
from sim_iocs.ad_plugins import make_std_arrays_class

__all__ = ["DRIVER_PORT", "PilatusBase", "make_pilatus_class"]

DRIVER_PORT = "PIL"


class PilatusBase(PVGroup):
    """The simulated Pilatus; a subclass made by :func:`make_pilatus_class` adds the groups.

    Parameters
    ----------
    shape
        Frame shape (ny, nx).
    model
        ``Model_RBV``, e.g. ``"Pilatus 1M (simulated)"``.
    data_root
        The only folder the HDF5 plugin may write into (and read NDAttributes files from).
    """

    cam: PilatusDriverGroup
    image: Any
    hdf: NDFileHDF5Group

    def __init__(self, *args: Any, shape: tuple[int, int], model: str, data_root: Path,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shape = shape
        self.model_name = model
        self.data_root = Path(os.path.realpath(data_root))
        self.plugins = (self.image, self.hdf)

    def wire(self, frame_source: FrameSource, pv_lookup: Callable[[str], Any],
             ioc_prefix: str, default_attributes_xml: str) -> None:
        """Attach the simulation and the IOC's PV lookup (for NDAttributes).

        Parameters
        ----------
        frame_source
            Gives the driver its frames.
        pv_lookup
            IOC PV name -> channel, for EPICS_PV NDAttributes.
        ioc_prefix
            The IOC prefix: ``PARAM`` NDAttributes read driver PVs below it.
        default_attributes_xml
            The NDAttributes XML the built-in attributes file name stands for.
        """
        self.cam.frame_source = frame_source
        self.cam.plugins = self.plugins
        self.hdf.attribute_layout = lambda: self.cam.attributes_now()
        for group in (self.cam, *self.plugins):
            group.pv_lookup = pv_lookup
            group.ioc_prefix = ioc_prefix
            group.data_root = self.data_root
            group.default_attributes_xml = default_attributes_xml

    async def initialize(self) -> None:
        """Publish the values a real IOC has after boot (autosave defaults)."""
        ny, nx = self.shape
        cam = self.cam
        await cam.port_name.write(DRIVER_PORT)
        await cam.model.write(self.model_name)
        for pv, value in ((cam.max_size_x, nx), (cam.max_size_y, ny), (cam.array_size_x, nx),
                          (cam.array_size_y, ny), (cam.array_size_z, 0),
                          (cam.array_size0, nx), (cam.array_size1, ny),
                          (cam.array_size_bytes, 4 * nx * ny)):
            await pv.write(value)
        await cam.ndimensions.readback.write(2)
        await cam.ndimensions.setpoint.write(2, verify_value=False)
        await cam.nd_attributes_file.write(DEFAULT_ATTRIBUTES_FILE)
        await self.hdf.nd_attributes_file.write("")
        await self.image.nd_attributes_file.write("")
        for plugin, port, kind in ((self.image, "IMAGE1", "NDPluginStdArrays"),
                                   (self.hdf, "HDF1", "NDFileHDF5")):
            await plugin.port_name.write(port)
            await plugin.plugin_type.write(kind)
            await plugin.nd_array_port.setpoint.write(DRIVER_PORT, verify_value=False)
            await plugin.nd_array_port.readback.write(DRIVER_PORT)
        # FilePath starts at the data root; image1 is enabled at boot (as an autosaved IOC
        # usually has it), HDF1 is not
        await self.hdf.file_path.setpoint.write(f"{self.data_root}/")
        await self.image.enable_callbacks.setpoint.write("Enable", verify_value=False)
        await self.image.enable_callbacks.readback.write("Enable")


def make_pilatus_class(shape: tuple[int, int]) -> type[PilatusBase]:
    """Return the Pilatus IOC class for frames of ``shape``.

    One class per shape because the image waveform length is static.
    """
    ny, nx = shape
    std_arrays = make_std_arrays_class(nx * ny)

    class SimPilatus(PilatusBase):
        """Simulated ADPilatus IOC: driver ``cam1:``, ``image1:`` and ``HDF1:`` plugins."""

        cam = SubGroup(PilatusDriverGroup, prefix="cam1:")
        image = SubGroup(std_arrays, prefix="image1:")
        hdf = SubGroup(NDFileHDF5Group, prefix="HDF1:")

    return SimPilatus
