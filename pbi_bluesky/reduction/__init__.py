"""SAXS 2D->1D reduction built on pyFAI.

The fast path (:class:`FoldedIntegrator`) folds every static correction into one sparse
matrix and matches ``pyFAI.integrate1d`` (bbox/csr/cython, Poisson error model).
:meth:`Reducer.reduce_absolute` is the one path to absolute I(q) (I0, solid angle,
transmission, thickness, and the instrument's :class:`AbsoluteScale` factor).
"""

from .absolute import (
    WATER_INV_CM_20C,
    AbsoluteScale,
    absolute_scale_path,
    calibrate_with_water,
    find_absolute_scale,
    load_absolute_scale,
    save_absolute_scale,
)
from .errors import ReductionError
from .geometry import (
    absolute_monitor,
    expected_frame,
    geometry_provenance,
    load_geometry,
    load_geometry_text,
    make_geometry,
)
from .images import (
    as_frame,
    frame_stored,
    hdf5_dataset,
    hdf5_entry,
    open_hdf5,
    read_hdf5_frame,
    read_image,
    refuse_escapes,
)
from .integrator import FoldedIntegrator
from .io1d import (
    read_ascii,
    read_cansas_xml,
    read_nxcansas,
    read_profile,
    write_ascii,
    write_nxcansas,
)
from .pipeline import Reducer

__all__ = [
    "WATER_INV_CM_20C",
    "AbsoluteScale",
    "absolute_scale_path",
    "calibrate_with_water",
    "find_absolute_scale",
    "load_absolute_scale",
    "save_absolute_scale",
    "FoldedIntegrator",
    "Reducer",
    "absolute_monitor",
    "load_geometry_text",
    "ReductionError",
    "as_frame",
    "expected_frame",
    "geometry_provenance",
    "load_geometry",
    "make_geometry",
    "read_ascii",
    "hdf5_dataset",
    "frame_stored",
    "hdf5_entry",
    "open_hdf5",
    "read_hdf5_frame",
    "refuse_escapes",
    "read_image",
    "read_cansas_xml",
    "read_nxcansas",
    "read_profile",
    "write_ascii",
    "write_nxcansas",
]
