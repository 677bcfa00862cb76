"""Run-time parameters a worker changes without a rebuild: seed thresholds and input scaling.

A backend with a register bank (``backend.registers``: the RTL simulation or the PYNQ board of
``firmware build --registers``) gets them as writes through its ``RegisterMap``, committed
between two batches (an event boundary). Its seed bits are then the trigger decision of its
seeds, and `FirmwareSeeds` counts every event where a bit differs from the software menu's
``score > threshold`` (0 on working firmware: the encodings are equal on the score's grid). On
the emulator the same scaling is the IR with its ``scale`` arrays replaced
(``registers.with_scaling``), checked against the ranges a register build of that IR accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.firmware.registers import RegisterClient, RegisterError, RegisterMap, split_scaling
from l1forge.models.qnet import QNet
from l1forge.online.datapath.menu import Menu


def registers_of(backend: Any) -> RegisterClient | None:
    """The backend's register bank (None: the emulator, or firmware built without registers)."""
    regs = getattr(backend, "registers", None)
    return regs if isinstance(regs, RegisterClient) else None


def check_scaling(net: QNet, offset: Sequence[int], shift: Sequence[int]) -> None:
    """RegisterError unless ``net`` starts with a ``scale`` op and the values fit the OFFSET and
    SHIFT registers a ``--registers`` build of ``net`` would have (``registers.shift_range``)."""
    scaling, _ = split_scaling(net)
    if scaling is None:
        raise RegisterError(
            f"model {net.name!r} does not start with a scale op: it has no input scaling to set"
        )
    of = scaling.scale.array_formats["offset"]
    n = net.input_specs[0].size
    ranges = (
        ("OFFSET", offset, of.min_int, of.max_int),
        ("SHIFT", shift, scaling.shift_lo, scaling.shift_hi),
    )
    for name, values, lo, hi in ranges:
        if len(values) != n:
            raise RegisterError(f"{name}: {len(values)} values for {n} features")
        for j, v in enumerate(values):
            if not lo <= int(v) <= hi:
                raise RegisterError(f"register {name}[{j}]: {v} outside {lo}..{hi}")


def firmware_map(firmware_dir: str | Path) -> RegisterMap | None:
    """The register map of a firmware folder (None when it was built without registers)."""
    from l1forge.firmware import packing

    doc = packing.load(Path(firmware_dir) / "packing.json").registers
    return None if doc is None else RegisterMap.from_json(doc)


class FirmwareSeeds:
    """The seeds of one model decided by its backend's register bank: thresholds written at
    every menu change, the firmware's bits per batch, and per-seed mismatch counts."""

    def __init__(self, model: str, backend: Any):
        regs = registers_of(backend)
        if regs is None:
            raise RegisterError(f"model {model!r}: backend {backend.name} has no register bank")
        self.model = model
        self.backend = backend
        self.registers = regs
        self.slots: dict[str, int] = {}  # seed name -> THRESHOLD slot (seed bit)
        self.mismatches: dict[str, int] = {}
        self.events = 0

    def plan(self, menu: Menu) -> tuple[list[float], dict[str, int]]:
        """The menu's thresholds for the bank and its seed -> slot map; RegisterError if the
        menu does not fit (more seeds on this model than threshold registers)."""
        thresholds, slots = self.registers.map.menu_thresholds(menu, self.model)
        self.registers.map.threshold_writes(thresholds)  # every value encodable, or raise
        return thresholds, slots

    def program(self, plan: tuple[list[float], dict[str, int]]) -> None:
        """Write the planned thresholds and COMMIT (call between two batches)."""
        thresholds, slots = plan
        self.registers.set_thresholds(thresholds)
        self.slots = dict(slots)
        for name in slots:
            self.mismatches.setdefault(name, 0)

    def fired(self) -> dict[str, np.ndarray]:
        """The firmware's threshold decision of each of its seeds in the last batch, bool (N,)."""
        bits = np.asarray(self.backend.last_seed_bits)
        return {name: bits[:, slot] != 0 for name, slot in self.slots.items()}

    def compare(self, fired: dict[str, np.ndarray], menu: Menu, software_bits: np.ndarray) -> int:
        """Count events where the firmware's bit differs from the menu's own decision
        (``software_bits``: ``menu.decide(..., prescale=False)``); returns the new mismatches."""
        new = 0
        for name, f in fired.items():
            soft = (software_bits >> np.uint32(menu.names.index(name))) & np.uint32(1) != 0
            n = int(np.count_nonzero(f != soft))
            self.mismatches[name] = self.mismatches.get(name, 0) + n
            new += n
        self.events += len(software_bits)
        return new

    def status(self) -> dict[str, Any]:
        """Register VERSION and THRESHOLD integers read back, the seed slots, mismatches per
        seed and events compared."""
        return {
            "backend": self.backend.name,
            "registers_version": self.registers.version,
            "thresholds": self.thresholds_read_back(),
            "seed_slots": dict(self.slots),
            "seed_mismatches": dict(self.mismatches),
            "events_compared": self.events,
        }

    def thresholds_read_back(self) -> list[int]:
        """The THRESHOLD registers' integers as the bank returns them."""
        return [self.registers.read("THRESHOLD", i) for i in range(self.registers.map.n_seeds)]


def check_menu_for(kind: str, firmware_dir: str | Path | None, model: str, menu: Menu) -> None:
    """RegisterError if ``menu`` does not fit the register bank of the run's hardware backend
    (``kind`` rtl or pynq runs the first model, ``model``); nothing to check otherwise."""
    if kind not in ("rtl", "pynq") or firmware_dir is None:
        return
    rmap = firmware_map(firmware_dir)
    if rmap is not None:
        rmap.threshold_writes(rmap.menu_thresholds(menu, model)[0])


def check_scaling_for(
    kind: str, firmware_dir: str | Path | None, hardware: bool, net: QNet, scaling: Any
) -> None:
    """RegisterError if ``scaling`` (an InputScaling) cannot be set on its model: on the
    hardware model (``hardware``) against the firmware's map, else against ``net``."""
    if hardware and kind in ("rtl", "pynq") and firmware_dir is not None:
        rmap = firmware_map(firmware_dir)
        if rmap is None:
            raise RegisterError(
                f"the {kind} firmware in {firmware_dir} was built without registers "
                "(rebuild with `l1forge firmware build --registers`)"
            )
        rmap.scale_writes(scaling.offset, scaling.shift)
        return
    check_scaling(net, scaling.offset, scaling.shift)
