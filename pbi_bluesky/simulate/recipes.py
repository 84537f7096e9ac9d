"""Blend systems and recipes as data.

A :class:`BlendSystem` describes two polymers (X-ray scattering-length densities, mass
densities, attenuation, thermal density-fluctuation background) and how the blend's
nanostructure depends on composition (domain spacing, correlation length, macrophase
interface). A recipe is a nominal weight ratio such as ``"25:75"`` (wt% of component A
to wt% of component B). Everything is plain data, loadable from YAML or JSON, so other
blends than PS/PMMA are a configuration file away.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = [
    "Component",
    "StructureAnchor",
    "BlendSystem",
    "PS_PMMA",
    "parse_recipe",
    "format_recipe",
    "load_blend_system",
]


@dataclass(frozen=True)
class Component:
    """One polymer of a blend.

    Parameters
    ----------
    name
        Short name, e.g. ``"PS"``.
    sld_1e6_inv_A2
        X-ray scattering-length density in 1e-6 / angstrom^2.
    density_g_cm3
        Mass density, used to turn weight fractions into volume fractions.
    fluctuation_background_inv_cm
        Flat thermal density-fluctuation scattering of the pure polymer, 1/cm.
    attenuation_inv_cm
        Linear X-ray attenuation coefficient at the working energy (about 12 keV), 1/cm.
    """

    name: str
    sld_1e6_inv_A2: float
    density_g_cm3: float
    fluctuation_background_inv_cm: float
    attenuation_inv_cm: float


@dataclass(frozen=True)
class StructureAnchor:
    """Nanostructure of the blend at one weight fraction of component A."""

    weight_fraction_a: float
    domain_spacing_A: float
    correlation_length_A: float


@dataclass(frozen=True)
class BlendSystem:
    """A binary polymer blend and its nominal recipes.

    ``structure`` anchors are interpolated linearly in weight fraction, so the domain
    spacing and correlation length of any composition (including a drifted one) follow.
    ``interface_area_per_volume_inv_cm`` is the macrophase interfacial area S/V of a
    50:50 blend; it scales with 4*phi*(1-phi).
    """

    name: str
    component_a: Component
    component_b: Component
    recipes: tuple[str, ...]
    structure: tuple[StructureAnchor, ...]
    interface_area_per_volume_inv_cm: float = 1.5e3
    thickness_cm: float = 0.1
    batch_scatter: dict[str, float] = field(
        default_factory=lambda: {
            "weight_fraction": 0.005,
            "domain_spacing": 0.02,
            "correlation_length": 0.04,
            "interface": 0.08,
            "background": 0.03,
            "scale": 0.02,
        }
    )

    def __post_init__(self) -> None:
        for recipe in self.recipes:
            parse_recipe(recipe)
        if len(self.structure) == 0:
            raise ValueError(f"blend system {self.name!r} has no structure anchors")

    # -- composition --------------------------------------------------------------
    def volume_fraction_a(self, weight_fraction_a: float) -> float:
        """Volume fraction of component A from its weight fraction."""
        va = weight_fraction_a / self.component_a.density_g_cm3
        vb = (1.0 - weight_fraction_a) / self.component_b.density_g_cm3
        return float(va / (va + vb)) if (va + vb) > 0 else 0.0

    def contrast_1e6_inv_A2(self) -> float:
        """SLD difference between the components, 1e-6 / angstrom^2."""
        return self.component_a.sld_1e6_inv_A2 - self.component_b.sld_1e6_inv_A2

    def structure_at(self, weight_fraction_a: float) -> tuple[float, float]:
        """Domain spacing and correlation length (angstrom) at a weight fraction."""
        anchors = sorted(self.structure, key=lambda a: a.weight_fraction_a)
        w = [a.weight_fraction_a for a in anchors]
        d = float(np.interp(weight_fraction_a, w, [a.domain_spacing_A for a in anchors]))
        xi = float(np.interp(weight_fraction_a, w, [a.correlation_length_A for a in anchors]))
        return d, xi

    def attenuation_inv_cm(self, weight_fraction_a: float) -> float:
        """Linear attenuation of the blend (volume-weighted), 1/cm."""
        phi = self.volume_fraction_a(weight_fraction_a)
        return phi * self.component_a.attenuation_inv_cm + (
            1 - phi
        ) * self.component_b.attenuation_inv_cm

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (the inverse of :func:`blend_system_from_dict`)."""
        return asdict(self)


def parse_recipe(recipe: str) -> float:
    """Weight fraction of component A from a recipe string ``"A:B"`` in wt%.

    >>> parse_recipe("25:75")
    0.25
    """
    try:
        a_text, b_text = str(recipe).split(":")
        a, b = float(a_text), float(b_text)
    except ValueError as exc:
        raise ValueError(f"recipe {recipe!r} is not of the form 'A:B' (wt%), e.g. '25:75'") from exc
    if a < 0 or b < 0 or a + b <= 0:
        raise ValueError(f"recipe {recipe!r} needs non-negative parts with a positive sum")
    return a / (a + b)


def format_recipe(weight_fraction_a: float) -> str:
    """Recipe string from a weight fraction of component A (rounded to 0.1 wt%)."""
    a = round(100.0 * weight_fraction_a, 1)
    b = round(100.0 - a, 1)
    return f"{a:g}:{b:g}"


PS_PMMA = BlendSystem(
    name="PS/PMMA",
    component_a=Component("PS", 9.6, 1.05, 0.030, 2.5),
    component_b=Component("PMMA", 10.9, 1.18, 0.022, 4.2),
    recipes=("0:100", "25:75", "50:50", "75:25", "100:0"),
    structure=(
        StructureAnchor(0.0, 240.0, 100.0),
        StructureAnchor(0.25, 260.0, 110.0),
        StructureAnchor(0.50, 320.0, 150.0),
        StructureAnchor(0.75, 280.0, 120.0),
        StructureAnchor(1.0, 250.0, 100.0),
    ),
)
"""Compatibilised PS/PMMA blends (X-ray SLDs 9.6 and 10.9e-6/A^2) at the paper's recipes."""


def blend_system_from_dict(data: dict[str, Any]) -> BlendSystem:
    """Build a :class:`BlendSystem` from plain data (as read from YAML/JSON)."""
    try:
        comp_a = Component(**data["component_a"])
        comp_b = Component(**data["component_b"])
        anchors = tuple(StructureAnchor(**a) for a in data["structure"])
        extra = {
            k: data[k]
            for k in ("interface_area_per_volume_inv_cm", "thickness_cm", "batch_scatter")
            if k in data
        }
        return BlendSystem(
            name=str(data.get("name", f"{comp_a.name}/{comp_b.name}")),
            component_a=comp_a,
            component_b=comp_b,
            recipes=tuple(str(r) for r in data["recipes"]),
            structure=anchors,
            **extra,
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"invalid blend-system description: {exc}") from exc


def load_blend_system(path: str | Path) -> BlendSystem:
    """Load a blend system from a YAML or JSON file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"blend-system file {path} not found")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"blend-system file {path} does not hold a mapping")
    return blend_system_from_dict(data)
