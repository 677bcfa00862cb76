"""Material constants for calorimeter simulation and costing, with units and sources.

Physics values: Particle Data Group, "Atomic and Nuclear Properties of Materials"
(pdg.lbl.gov/AtomicNuclearProperties, 2022 edition): radiation length ``x0_cm``, Molière radius
``rm_cm``, critical energy for electrons ``ec_mev`` (Rossi definition), density, minimum
ionization loss ``dedx_mip_mev_cm2_g``. Polystyrene stands for plastic scintillator; its ``z`` is
the electron-weighted effective Z of (C8H8)n, as GFlash uses an effective Z for compounds.

Cost values are ASSUMPTIONS (order of magnitude, 2020s list prices of raw or semi-finished
material, machining excluded) for relative comparisons in design studies, never for budgets:
lead ~3 EUR/kg (LME metal price plus casting), tungsten heavy alloy ~60 EUR/kg (sintered
plates), low-carbon steel ~2 EUR/kg (plate), cast polystyrene scintillator ~40 EUR/kg
(tiles, e.g. EJ-200 class, dominated by processing), liquid argon ~2 EUR/kg delivered
(cryostat not included). Change them per study through the co-design config.
"""

from __future__ import annotations

from dataclasses import dataclass

from l1forge.errors import ConfigError

# Multiple-scattering energy scale E_s = m_e c^2 sqrt(4 pi / alpha) (PDG review "Passage of
# particles through matter"); R_M = X0 * E_s / E_c.
ES_MEV = 21.2052


@dataclass(frozen=True)
class Material:
    """One material's constants; lengths in cm, energies in MeV, costs in EUR."""

    name: str
    z: float
    a: float
    density_g_cm3: float
    x0_cm: float
    rm_cm: float
    ec_mev: float
    dedx_mip_mev_cm2_g: float
    cost_eur_per_kg: float

    @property
    def dedx_mip_mev_cm(self) -> float:
        """Minimum-ionizing energy loss per cm of this material."""
        return self.dedx_mip_mev_cm2_g * self.density_g_cm3

    @property
    def cost_eur_per_cm3(self) -> float:
        return self.cost_eur_per_kg * self.density_g_cm3 * 1e-3


MATERIALS: dict[str, Material] = {
    "Pb": Material("Pb", 82.0, 207.2, 11.35, 0.5612, 1.602, 7.43, 1.122, 3.0),
    "W": Material("W", 74.0, 183.84, 19.30, 0.3504, 0.9327, 7.97, 1.145, 60.0),
    "Fe": Material("Fe", 26.0, 55.845, 7.874, 1.757, 1.719, 21.68, 1.451, 2.0),
    "scintillator": Material("scintillator", 5.61, 11.16, 1.060, 41.31, 9.410, 93.11, 2.052, 40.0),
    "LAr": Material("LAr", 18.0, 39.948, 1.396, 14.00, 9.043, 32.84, 1.519, 2.0),
}

ABSORBERS: tuple[str, ...] = ("Pb", "W", "Fe")
ACTIVE: tuple[str, ...] = ("scintillator", "LAr")


def material(name: str, *, where: str = "material") -> Material:
    """The named material, or a ConfigError naming the key and the known materials."""
    try:
        return MATERIALS[name]
    except KeyError:
        raise ConfigError(
            f"{where}: unknown material {name!r}; known: {sorted(MATERIALS)}"
        ) from None
