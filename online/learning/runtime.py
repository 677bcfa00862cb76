"""The learner's first resort: what the trigger firmware changes at run time (no new bitstream).

The register bank (``l1forge.firmware.registers``) holds the seed thresholds and the per-feature
offsets and shifts of the network's input ``scale`` op. An adaptation first tries these, in
order of how little they change:

- ``thresholds``: the running network, its thresholds recalibrated on the new events;
- ``offsets``: the input offsets moved so that the new events, scaled, have the mean the
  network's scaled inputs had on the events its weights were trained for (shifts kept);
- ``scaling``: offsets and shifts both, the shift by the power of two nearest to the ratio of
  the spreads (a shift cannot express a 5 % change; the offsets absorb what they can).

Every value stays inside the register ranges of the bank (``register_map``): offsets in the
IR's offset format, shifts in ``shift_range``. A network without a leading ``scale`` op has only
the thresholds path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from l1forge.errors import ConfigError, DataFormatError
from l1forge.firmware.registers import split_scaling, with_scaling
from l1forge.models.qnet import QNet
from l1forge.online.learning.settings import RUNTIME_KINDS


@dataclass(frozen=True)
class RuntimeChange:
    """One run-time candidate: the network the firmware computes after the register writes."""

    kind: str  # one of settings.RUNTIME_KINDS
    net: QNet
    offset: np.ndarray | None  # the new OFFSET registers (None: unchanged)
    shift: np.ndarray | None  # the new SHIFT registers (None: unchanged)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "offset": None if self.offset is None else [int(v) for v in self.offset],
            "shift": None if self.shift is None else [int(v) for v in self.shift],
        }


def matched_scaling(
    net: QNet, x_trained: np.ndarray, x_new: np.ndarray, *, keep_shift: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and shifts under which ``x_new`` (hardware integers, (N, features)) reaches the
    network with the per-feature mean (and, unless ``keep_shift``, the spread to the nearest
    power of two) that ``x_trained`` has under the network's present scaling."""
    scaling, _ = split_scaling(net)
    if scaling is None:
        raise DataFormatError(f"{net.name!r} has no input scale op: only thresholds change")
    x_trained = np.asarray(x_trained, np.float64)
    x_new = np.asarray(x_new, np.float64)
    n_feat = net.input_specs[0].size
    for name, x in (("x_trained", x_trained), ("x_new", x_new)):
        if x.ndim != 2 or x.shape[1] != n_feat or len(x) == 0:
            raise DataFormatError(f"{name}: need a non-empty (N, {n_feat}) array, got {x.shape}")
    lay = scaling.scale
    o_fmt = lay.array_formats["offset"]
    lsb_x, lsb_o = scaling.x.lsb, o_fmt.lsb
    o_old = lay.arrays["offset"].astype(np.float64) * lsb_o
    s_old = lay.arrays["shift"].astype(np.int64)
    m_old, m_new = x_trained.mean(axis=0) * lsb_x, x_new.mean(axis=0) * lsb_x
    s_new = s_old.copy()
    if not keep_shift:
        sd_old, sd_new = x_trained.std(axis=0) * lsb_x, x_new.std(axis=0) * lsb_x
        ok = (sd_old > 0) & (sd_new > 0)
        ratio = np.where(ok, sd_new / np.where(ok, sd_old, 1.0), 1.0)
        s_new = np.clip(
            s_old + np.rint(np.log2(ratio)).astype(np.int64), scaling.shift_lo, scaling.shift_hi
        )
    # the scaled mean is kept: (m_new - o_new) 2**-s_new = (m_old - o_old) 2**-s_old
    o_real = m_new - (m_old - o_old) * 2.0 ** (s_new - s_old).astype(np.float64)
    offset = np.clip(np.rint(o_real / lsb_o), o_fmt.min_int, o_fmt.max_int).astype(np.int64)
    return offset, s_new


def runtime_changes(
    net: QNet,
    x_trained: np.ndarray,
    x_new: np.ndarray,
    kinds: tuple[str, ...] = RUNTIME_KINDS,
) -> list[RuntimeChange]:
    """The run-time candidates of ``net`` for new events ``x_new`` (module docstring) among
    ``kinds``, fewest register writes first; one equal to an earlier candidate is left out."""
    bad = set(kinds) - set(RUNTIME_KINDS)
    if bad:
        raise ConfigError(f"run-time changes {sorted(bad)}: choose from {RUNTIME_KINDS}")
    out = [RuntimeChange("thresholds", net, None, None)] if "thresholds" in kinds else []
    scaling, _ = split_scaling(net)
    if scaling is None:
        return out
    old = (scaling.scale.arrays["offset"], scaling.scale.arrays["shift"])
    seen = [tuple(np.asarray(a, np.int64).tobytes() for a in old)]
    for kind, keep in (("offsets", True), ("scaling", False)):
        if kind not in kinds:
            continue
        offset, shift = matched_scaling(net, x_trained, x_new, keep_shift=keep)
        key = (offset.tobytes(), shift.tobytes())
        if key in seen:
            continue
        seen.append(key)
        out.append(RuntimeChange(kind, with_scaling(net, offset, shift), offset, shift))
    return out
