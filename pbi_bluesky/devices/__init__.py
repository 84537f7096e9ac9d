"""ophyd devices for SAXS beamlines (detector, sample changer, beam monitor).

Must not import :mod:`pbi_bluesky.reduction` or the models: devices only move, trigger and
read; reduction happens in consumers of the documents.
"""

from pbi_bluesky.devices.saxs import (
    HANDLER_REGISTRY,
    Beamline,
    BeamlineConnectionError,
    BeamMonitor,
    DetectorTimeoutError,
    HDF5Plugin,
    ImageSignal,
    SampleChanger,
    SAXSCam,
    SAXSDetector,
    SAXSDetectorHDF5,
    SAXSHDF5Handler,
    TraySlotInfo,
    connect_beamline,
)

__all__ = [
    "HANDLER_REGISTRY",
    "HDF5Plugin",
    "SAXSDetectorHDF5",
    "SAXSHDF5Handler",
    "Beamline",
    "BeamlineConnectionError",
    "BeamMonitor",
    "DetectorTimeoutError",
    "ImageSignal",
    "SAXSCam",
    "SAXSDetector",
    "SampleChanger",
    "TraySlotInfo",
    "connect_beamline",
]
