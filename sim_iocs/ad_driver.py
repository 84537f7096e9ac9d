"""areaDetector driver templates: NDArrayBase, ADBase and the ADPilatus additions (``cam1:``).

One caproto ``PVGroup`` per template, as ADCore's ``NDArrayBase.template``,
``ADBase.template`` and ADPilatus's ``pilatus.template`` declare them. The Pilatus group
also runs acquisitions: ``ImageMode`` Single / Multiple / Continuous, ``NumImages`` frames
of ``AcquireTime`` (times ``NumExposures``) paced by ``AcquirePeriod`` (internal trigger),
``Armed`` while acquiring, ``DetectorState_RBV`` Acquire -> Idle (or Aborted), and the
``Acquire`` put completing only when the acquisition ends, like the busy record of a real
driver. Frames come from a :class:`FrameSource` (the beamline simulation).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from sim_iocs.ad_common import (
    ACQUIRE,
    COLOR_MODES,
    DATA_TYPES,
    DETECTOR_STATES,
    DISABLE_ENABLE,
    EPICS_EPOCH_OFFSET_S,
    IMAGE_MODES,
    NO_YES,
    PILATUS_TRIGGER_MODES,
    XML_LENGTH,
    NDArray,
    choice_index,
    enum_pair,
    enum_pv,
    is_on,
    number_pair,
    string_pv,
)
from sim_iocs.ndattributes import AttributeSpec, NDAttributeError, evaluate, parse_attributes

__all__ = ["ADBaseGroup", "DEFAULT_ATTRIBUTES_FILE", "FrameSource", "NDArrayBaseGroup",
           "PilatusDriverGroup"]

log = logging.getLogger(__name__)

DEFAULT_ATTRIBUTES_FILE = "pbi_sim_attributes.xml"
"""``NDAttributesFile`` value naming the IOC's built-in attribute set (I0, Transmission)."""
ATTRIBUTE_STATUS = ("Attributes file OK", "File not found", "XML syntax error",
                    "Macro substitution error")


class FrameSource(Protocol):
    """What the detector exposes: the beamline simulation behind the PVs."""

    async def expose(self, exposure_s: float) -> np.ndarray:
        """Take one exposure; return after ``exposure_s`` with the (ny, nx) int32 frame.

        May update monitor PVs (I0, transmission) before returning; may hang until
        cancelled (a simulated detector fault).
        """
        ...


def _string(name: str, value: str = "") -> pvproperty:
    """Return a read-only DBR_STRING (stringin record)."""
    return pvproperty(name=name, value=value, dtype=ChannelType.STRING, read_only=True,
                      doc=name)


def _ro(name: str, value: float | int) -> pvproperty:
    return pvproperty(name=name, value=value, read_only=True, doc=name)


class NDArrayBaseGroup(PVGroup):
    """``NDArrayBase.template``: identity, array description, counters, NDAttributes.

    The composition sets ``pv_lookup`` (IOC PV name -> channel), ``ioc_prefix`` and
    ``data_root`` (NDAttributes files are read only from inside it).
    """

    port_name = _string("PortName_RBV")
    ad_core_version = _string("ADCoreVersion_RBV", "3.12.1")
    driver_version = _string("DriverVersion_RBV", "pbi-sim 1.0")
    array_counter = number_pair("ArrayCounter", 0)
    array_rate = _ro("ArrayRate_RBV", 0.0)
    unique_id = _ro("UniqueId_RBV", 0)
    time_stamp = _ro("TimeStamp_RBV", 0.0)
    epics_ts_sec = _ro("EpicsTSSec_RBV", 0)
    epics_ts_nsec = _ro("EpicsTSNsec_RBV", 0)
    array_size_x = _ro("ArraySizeX_RBV", 0)
    array_size_y = _ro("ArraySizeY_RBV", 0)
    array_size_z = _ro("ArraySizeZ_RBV", 0)
    array_size0 = _ro("ArraySize0_RBV", 0)
    array_size1 = _ro("ArraySize1_RBV", 0)
    array_size2 = _ro("ArraySize2_RBV", 0)
    array_size_bytes = _ro("ArraySize_RBV", 0)
    ndimensions = number_pair("NDimensions", 0)
    data_type = enum_pair("DataType", DATA_TYPES, DATA_TYPES.index("Int32"))
    color_mode = enum_pair("ColorMode", COLOR_MODES, 0)
    nd_attributes_file = string_pv("NDAttributesFile", read_only=False, max_length=XML_LENGTH)
    nd_attributes_status = enum_pv("NDAttributesStatus", ATTRIBUTE_STATUS, read_only=True)

    pv_lookup: Any = staticmethod(lambda name: None)
    ioc_prefix: str = ""
    data_root: Path | None = None
    default_attributes_xml: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attribute_specs: list[AttributeSpec] = []
        self._rate_count = 0
        self._rate_t0 = time.monotonic()

    @data_type.setpoint.putter
    async def data_type(obj: Any, instance: Any, value: str) -> str:
        """Keep Int32 whatever is put (the simulated Pilatus delivers Int32 only)."""
        if value != "Int32":
            log.error("%s: DataType %s refused: the simulated Pilatus delivers Int32 only",
                      instance.pvname, value)
        return "Int32"

    @color_mode.setpoint.putter
    async def color_mode(obj: Any, instance: Any, value: str) -> str:
        """Keep Mono whatever is put (the simulated Pilatus is Mono)."""
        if value != "Mono":
            log.error("%s: ColorMode %s refused: the simulated Pilatus is Mono", instance.pvname,
                      value)
        return "Mono"

    @nd_attributes_file.putter
    async def nd_attributes_file(self, instance: Any, value: str) -> str:
        """Load the attribute set the put names (:meth:`load_attributes`)."""
        await self.load_attributes(value)
        return value

    async def load_attributes(self, value: str) -> None:
        """Replace the attribute set from an XML text, a file name, or the built-in name."""
        status = 0
        text = ""
        if "<Attributes" in value:
            text = value
        elif value.strip() == DEFAULT_ATTRIBUTES_FILE:
            text = self.default_attributes_xml
        elif value.strip():
            text, status = self._read_attributes_file(value.strip())
        specs: list[AttributeSpec] = []
        if text:
            try:
                specs, problems = parse_attributes(text, self.ioc_prefix, self.pv_lookup)
            except NDAttributeError as exc:
                log.error("%sNDAttributesFile: %s; no attributes recorded", self.prefix, exc)
                specs, problems, status = [], [], 2
            for p in problems:
                log.warning("%sNDAttributesFile: %s", self.prefix, p)
        self.attribute_specs = specs
        log.info("%s NDAttributes: %s", self.prefix, [s.name for s in specs] or "none")
        await self.nd_attributes_status.write(ATTRIBUTE_STATUS[status])

    def _read_attributes_file(self, name: str) -> tuple[str, int]:
        path = Path(name)
        root = self.data_root
        if root is None or not path.is_absolute() or not path.resolve().is_relative_to(root):
            log.error("%sNDAttributesFile %s: not found (files are read only from %s)",
                      self.prefix, name, root)
            return "", 1
        try:
            return path.read_text()[: 4 * XML_LENGTH], 0
        except OSError as exc:
            log.error("%sNDAttributesFile %s: %s", self.prefix, name, exc)
            return "", 1

    def attributes_now(self) -> dict[str, tuple[Any, str, str, str, str]]:
        """Return the attribute values at this moment."""
        return evaluate(self.attribute_specs, self.ioc_prefix, self.pv_lookup)

    async def describe_array(self, array: NDArray) -> None:
        """Publish what the last array looked like (plugin side: ArraySize0/1/2)."""
        ny, nx = array.data.shape
        sec, nsec = array.epics_ts
        await self.array_size0.write(nx)
        await self.array_size1.write(ny)
        await self.array_size2.write(0)
        await self.array_size_bytes.write(int(array.data.nbytes))
        await self.ndimensions.readback.write(2)
        await self.unique_id.write(array.unique_id)
        await self.time_stamp.write(array.timestamp - EPICS_EPOCH_OFFSET_S)
        await self.epics_ts_sec.write(sec)
        await self.epics_ts_nsec.write(nsec)

    async def count_array(self) -> None:
        """ArrayCounter_RBV + 1 and the array rate."""
        await self.array_counter.readback.write(int(self.array_counter.readback.value) + 1)
        self._rate_count += 1
        dt = time.monotonic() - self._rate_t0
        if dt >= 1.0:
            await self.array_rate.write(self._rate_count / dt)
            self._rate_count, self._rate_t0 = 0, time.monotonic()


class ADBaseGroup(NDArrayBaseGroup):
    """``ADBase.template``: acquisition control and detector identity."""

    manufacturer = _string("Manufacturer_RBV", "Dectris")
    model = _string("Model_RBV", "Pilatus (simulated)")
    serial_number = _string("SerialNumber_RBV", "SIM-0001")
    sdk_version = _string("SDKVersion_RBV", "camserver-sim")
    firmware_version = _string("FirmwareVersion_RBV", "sim")
    max_size_x = _ro("MaxSizeX_RBV", 0)
    max_size_y = _ro("MaxSizeY_RBV", 0)
    acquire = enum_pair("Acquire", ACQUIRE, doc="1: acquire; the put completes when done")
    acquire_time = number_pair("AcquireTime", 0.1, precision=4, units="s",
                               lower_ctrl_limit=1e-4, upper_ctrl_limit=3600.0)
    acquire_period = number_pair("AcquirePeriod", 0.1, precision=4, units="s",
                                 lower_ctrl_limit=0.0, upper_ctrl_limit=3600.0)
    num_images = number_pair("NumImages", 1, lower_ctrl_limit=1, upper_ctrl_limit=999_999)
    num_images_counter = _ro("NumImagesCounter_RBV", 0)
    num_exposures = number_pair("NumExposures", 1, lower_ctrl_limit=1, upper_ctrl_limit=1000)
    num_exposures_counter = _ro("NumExposuresCounter_RBV", 0)
    image_mode = enum_pair("ImageMode", IMAGE_MODES, 0)
    detector_state = enum_pv("DetectorState_RBV", DETECTOR_STATES, read_only=True)
    status_message = string_pv("StatusMessage_RBV", "Idle")
    time_remaining = _ro("TimeRemaining_RBV", 0.0)
    array_callbacks = enum_pair("ArrayCallbacks", DISABLE_ENABLE, 1)
    wait_for_plugins = enum_pv("WaitForPlugins", NO_YES, 0)

    @acquire.setpoint.putter
    async def acquire(obj: Any, instance: Any, value: str) -> str:
        """Start an acquisition and complete the put when it ends, or stop it."""
        driver: PilatusDriverGroup = obj.parent
        if not is_on(value):
            await driver.stop_acquisition()
            return "Done"
        task = await driver.start_acquisition()
        if task is None:
            return "Done"
        await instance.write("Acquire", verify_value=False)  # a busy record reads 1 meanwhile
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
        return "Done"


class PilatusDriverGroup(ADBaseGroup):
    """``pilatus.template`` additions, and the acquisition state machine.

    The composition sets ``frame_source`` and ``plugins`` (objects with
    ``receive(array, port)`` and ``drain()``).
    """

    trigger_mode = enum_pair("TriggerMode", PILATUS_TRIGGER_MODES, 0)
    armed = enum_pv("Armed", ("Unarmed", "Armed"), read_only=True)
    threshold_energy = number_pair("ThresholdEnergy", 6.2, precision=3, units="keV")
    energy = number_pair("Energy", 12.4, precision=3, units="keV")
    delay_time = number_pair("DelayTime", 0.0, precision=6, units="s")
    tvx_version = _string("TVXVersion_RBV", "tvx-sim")

    frame_source: FrameSource | None = None
    plugins: tuple[Any, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._task: asyncio.Task | None = None
        self._next_unique_id = 1

    async def start_acquisition(self) -> asyncio.Task | None:
        """Start acquiring (or return the running acquisition); None if refused."""
        if self._task is not None and not self._task.done():
            return self._task
        mode = str(self.trigger_mode.readback.value)
        if mode != "Internal":
            log.error("Acquire refused: TriggerMode %s needs an external trigger source, "
                      "which the simulation does not have (use Internal)", mode)
            await self.status_message.write(f"TriggerMode {mode} not simulated: use Internal")
            return None
        if self.frame_source is None:
            log.error("Acquire refused: no frame source attached")
            await self.status_message.write("No frame source")
            return None
        self._task = asyncio.get_running_loop().create_task(self._acquire())
        return self._task

    async def stop_acquisition(self) -> None:
        """Abort a running acquisition (Acquire = 0) and wait until it has stopped."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def _acquire(self) -> None:
        loop = asyncio.get_running_loop()
        mode = choice_index(self.image_mode.readback.value, IMAGE_MODES)
        n_images = {0: 1, 1: max(1, int(self.num_images.readback.value)), 2: None}[mode]
        n_exp = max(1, int(self.num_exposures.readback.value))
        exposure = float(self.acquire_time.readback.value)
        period = max(float(self.acquire_period.readback.value), exposure) * n_exp
        final = "Idle"
        await self.num_images_counter.write(0)
        await self.detector_state.write("Acquire")
        await self.armed.write("Armed")
        await self.acquire.readback.write("Acquire")
        await self.status_message.write("Acquiring")
        log.info("acquire: %s x %.4g s (period %.4g s)", n_images or "continuous",
                 exposure * n_exp, period)
        try:
            i = 0
            while n_images is None or i < n_images:
                start = loop.time()
                if n_images is not None:
                    await self.time_remaining.write(period * (n_images - i))
                frame = await self.frame_source.expose(exposure * n_exp)
                await self.publish_array(frame)
                i += 1
                await self.num_images_counter.write(i)
                await self.num_exposures_counter.write(n_exp)
                if n_images is not None and i >= n_images:
                    break
                await asyncio.sleep(max(0.0, start + period - loop.time()))
            if is_on(self.wait_for_plugins.value):
                await asyncio.gather(*(p.drain() for p in self.plugins))
        except asyncio.CancelledError:
            final = "Aborted"
            log.info("acquisition aborted")
        except Exception:  # keep the IOC alive; the client sees the error state
            final = "Error"
            log.exception("acquisition failed")
            await self.status_message.write("Acquisition failed: see the IOC log")
        finally:
            await self.time_remaining.write(0.0)
            await self.armed.write("Unarmed")
            await self.detector_state.write(final)
            if final != "Error":
                await self.status_message.write("Acquisition completed" if final == "Idle"
                                                else "Acquisition aborted")
            await self.acquire.readback.write("Done")

    async def publish_array(self, frame: np.ndarray) -> NDArray:
        """Make the NDArray of a new frame, count it and hand it to the plugins."""
        array = NDArray(np.asarray(frame, dtype=np.int32), self._next_unique_id, time.time(),
                        self.attributes_now())
        self._next_unique_id += 1
        await self.describe_array(array)
        await self.count_array()
        if is_on(self.array_callbacks.readback.value):
            port = str(self.port_name.value)
            for plugin in self.plugins:
                await plugin.receive(array, port)
        return array
