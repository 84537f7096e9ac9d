"""Physics simulator of SAXS from binary polymer blends (PS/PMMA by default).

Layers, bottom up: :mod:`~.recipes` (blend systems and recipes as data),
:mod:`~.scattering` (absolute I(q) from sasmodels kernels), :mod:`~.anomalies` (what goes
wrong with a specimen), :mod:`~.instrument` (a real pyFAI geometry plus beam and cell),
:mod:`~.render` (Poisson counts: reduced 1D profiles and 2D detector frames).
"""

from pbi_bluesky.simulate.anomalies import SAMPLE_ANOMALIES, applicable_anomalies, apply_anomaly
from pbi_bluesky.simulate.instrument import (
    DEFAULT_Q_RANGE,
    Instrument,
    empty_cell_per_sr,
    make_geometry,
)
from pbi_bluesky.simulate.recipes import (
    PS_PMMA,
    BlendSystem,
    Component,
    StructureAnchor,
    format_recipe,
    load_blend_system,
    parse_recipe,
)
from pbi_bluesky.simulate.render import (
    INSTRUMENT_FAULTS,
    WATER_INV_CM,
    RenderedFrame,
    expected_dark,
    expected_profile_inv_cm,
    render_empty_cell,
    render_frame,
    render_standard,
    simulate_profile,
)
from pbi_bluesky.simulate.scattering import SampleState, intensity_inv_cm, nominal_state

__all__ = [
    "DEFAULT_Q_RANGE",
    "INSTRUMENT_FAULTS",
    "WATER_INV_CM",
    "PS_PMMA",
    "SAMPLE_ANOMALIES",
    "BlendSystem",
    "Component",
    "Instrument",
    "RenderedFrame",
    "SampleState",
    "StructureAnchor",
    "applicable_anomalies",
    "apply_anomaly",
    "empty_cell_per_sr",
    "expected_dark",
    "expected_profile_inv_cm",
    "format_recipe",
    "intensity_inv_cm",
    "load_blend_system",
    "make_geometry",
    "nominal_state",
    "parse_recipe",
    "render_empty_cell",
    "render_frame",
    "render_standard",
    "simulate_profile",
]
