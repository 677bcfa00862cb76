"""The run-time register map of a trigger build: seed thresholds and the input scaling.

One ``RegisterMap`` is derived from the qnet IR when a firmware folder is built with registers,
saved in ``packing.json`` (key ``registers``) and read back by the cocotb bench, the PYNQ driver
(MMIO) and the RTL backend (a simulated AXI4-Lite bus), so all of them encode a menu's
thresholds and a ``scale`` op's offsets and shifts into the same 32-bit words. Registers are
32-bit words at byte addresses; a value is written as its two's-complement 32-bit word and must
lie in the register's range, or the bank answers SLVERR and keeps its old value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from l1forge.errors import ConfigError, DataFormatError
from l1forge.models.fixed import Fixed
from l1forge.models.qnet import Layer, QNet
from l1forge.records import record_json

MAP_FORMAT = "l1forge-registers"
MAP_VERSION = 1
ID_VALUE = 0x4C314652  # "L1FR"
ADDR_BITS = 12
REGION_WORDS = 256  # each parameter array has a 1 KiB region of 32-bit words
THRESHOLD_BASE = 0x400
OFFSET_BASE = 0x800
SHIFT_BASE = 0xC00
CONTROL = {"ID": 0x000, "MAP_VERSION": 0x004, "VERSION": 0x008, "COMMIT": 0x00C, "STATUS": 0x010}
INFO = {"N_SEEDS": 0x014, "N_FEATURES": 0x018}
COMMIT_VALUE = 1
MAX_SEEDS = 32
COMMIT_RULE = (
    "Writes to THRESHOLD/OFFSET/SHIFT land in the shadow set (reads return the shadow). Writing "
    "1 to COMMIT makes the shadow set active: at the clock edge where the bank performs the "
    "COMMIT write (the same edge raises its BVALID) VERSION increments and the offsets and shifts "
    "switch, so every event captured at a later edge is scaled with the new set and every event "
    "captured at that edge or earlier with the old one; the thresholds switch latency_cycles "
    "edges later, exactly when the first new event's score reaches the comparators. Until then "
    "STATUS bit 0 (commit pending) is set and further writes wait (AWREADY/WREADY low)."
)


class RegisterError(ConfigError):
    """A value does not fit its register, or a register name or array length is wrong."""


class RegisterBus(Protocol):
    """A 32-bit register port: ``pynq.MMIO`` (and PYNQ's DefaultIP) has exactly this interface."""

    def write(self, offset: int, value: int) -> None: ...

    def read(self, offset: int) -> int: ...


@dataclass(frozen=True)
class Register:
    """One 32-bit register (or register array) of the bank."""

    name: str
    address: int  # byte address of element 0
    count: int  # array length (1 for a single register)
    width: int  # bits used; the rest of the word is the sign (or zero) extension
    signed: bool
    frac_bits: int  # the value is ``integer * 2**-frac_bits``
    access: str  # "ro", "wo" or "rw"
    lo: int  # smallest integer accepted on write (reads never leave [lo, hi])
    hi: int
    reset: tuple[int, ...]  # value after reset, per element
    doc: str

    def addr(self, index: int = 0) -> int:
        if not 0 <= index < self.count:
            raise RegisterError(f"register {self.name}[{index}]: index outside 0..{self.count - 1}")
        return self.address + 4 * index

    def to_json(self) -> dict[str, Any]:
        return record_json(self)


@dataclass(frozen=True)
class RegisterMap:
    """Every register of one build, plus what the numbers mean (the score, the scale layers)."""

    network: str
    registers: tuple[Register, ...]
    score_field: str  # the output field the thresholds compare with (output element 0)
    score: Fixed
    scale_layers: tuple[str, ...]  # IR layers computed from OFFSET/SHIFT ("" when none)
    latency_cycles: int  # the trigger's latency: thresholds switch this many edges after commit

    @property
    def n_seeds(self) -> int:
        return self.reg("THRESHOLD").count

    @property
    def n_features(self) -> int:
        return self.reg("OFFSET").count if self.has_scaling else 0

    @property
    def has_scaling(self) -> bool:
        return any(r.name == "OFFSET" for r in self.registers)

    def reg(self, name: str) -> Register:
        for r in self.registers:
            if r.name == name:
                return r
        raise RegisterError(
            f"register map of {self.network!r} has no register {name!r} "
            f"(has {', '.join(r.name for r in self.registers)})"
        )

    # ---- values <-> words ---------------------------------------------------------------
    def word(self, name: str, value: int) -> int:
        """The 32-bit word that writes integer ``value`` into register ``name`` (range-checked)."""
        r = self.reg(name)
        if r.access == "ro":
            raise RegisterError(f"register {name} is read-only")
        v = int(value)
        if not r.lo <= v <= r.hi:
            raise RegisterError(
                f"register {name}: {v} outside {r.lo}..{r.hi} (the bank would answer SLVERR)"
            )
        return v & 0xFFFFFFFF

    def decode(self, name: str, word: int) -> int:
        """The integer a read of register ``name`` returned."""
        r = self.reg(name)
        w = int(word) & 0xFFFFFFFF
        return w - (1 << 32) if r.signed and w >> 31 else w

    def threshold_ints(self, thresholds: Sequence[float]) -> list[int]:
        """Real thresholds -> THRESHOLD integers, one per seed slot (missing slots never fire).

        The comparator fires when ``score > T``; with ``T = floor(t * 2**frac_bits)`` clamped to
        the register's range that equals the menu's ``score > t`` for every score on its grid.
        """
        r = self.reg("THRESHOLD")
        if len(thresholds) > r.count:
            raise RegisterError(f"{len(thresholds)} thresholds for {r.count} seed slots")
        out = []
        for t in [*thresholds, *([math.inf] * (r.count - len(thresholds)))]:
            t = float(t)
            if math.isnan(t):
                raise RegisterError("threshold NaN has no register value")
            scaled = t * 2.0**r.frac_bits
            out.append(r.hi if scaled >= r.hi else r.lo if scaled < r.lo else math.floor(scaled))
        return out

    def threshold_writes(self, thresholds: Sequence[float]) -> list[tuple[int, int]]:
        r = self.reg("THRESHOLD")
        ints = self.threshold_ints(thresholds)
        return [(r.addr(i), self.word("THRESHOLD", v)) for i, v in enumerate(ints)]

    def scale_writes(self, offset: Sequence[int], shift: Sequence[int]) -> list[tuple[int, int]]:
        """OFFSET and SHIFT writes for the scale op's integer arrays (range-checked)."""
        if not self.has_scaling:
            raise RegisterError(f"{self.network!r} was built without run-time input scaling")
        writes = []
        for name, given in (("OFFSET", offset), ("SHIFT", shift)):
            r = self.reg(name)
            values = np.asarray(given).ravel()
            if len(values) != r.count:
                raise RegisterError(f"{name}: {len(values)} values for {r.count} features")
            writes += [(r.addr(i), self.word(name, int(v))) for i, v in enumerate(values)]
        return writes

    def commit_write(self) -> tuple[int, int]:
        return (self.reg("COMMIT").address, COMMIT_VALUE)

    def seed_bits(self, score: np.ndarray, thresholds: Sequence[int]) -> np.ndarray:
        """Reference of the comparators: ``int64 (N, n_seeds)`` bits of ``score > T[i]``."""
        t = np.asarray(thresholds, dtype=np.int64)
        return (np.asarray(score, dtype=np.int64).reshape(-1, 1) > t[None, :]).astype(np.int64)

    def menu_thresholds(self, menu: Any, model: str) -> tuple[list[float], dict[str, int]]:
        """The thresholds of ``menu``'s seeds on ``model`` in slot order, and seed -> bit.

        Prescales and zero-bias seeds stay in software: the firmware's seed bit is the
        threshold decision alone.
        """
        seeds = [s for s in menu.seeds if s.model == model]
        if len(seeds) > self.n_seeds:
            raise RegisterError(
                f"menu has {len(seeds)} seeds on {model!r}, the firmware {self.n_seeds} slots"
            )
        return [s.threshold for s in seeds], {s.name: i for i, s in enumerate(seeds)}

    # ---- a register port ----------------------------------------------------------------
    def program(
        self, bus: RegisterBus, writes: Iterable[tuple[int, int]], commit: bool = True
    ) -> int:
        """Write ``writes`` (then COMMIT) through ``bus``; returns VERSION read afterwards."""
        for addr, word in writes:
            bus.write(addr, word)
        if commit:
            bus.write(*self.commit_write())
        return int(bus.read(self.reg("VERSION").address))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MAP_FORMAT,
            "version": MAP_VERSION,
            "network": self.network,
            "bus": "AXI4-Lite, 32-bit data, byte addresses, full-word writes only",
            "address_bits": ADDR_BITS,
            "score_field": self.score_field,
            "score": self.score.to_json(),
            "scale_layers": list(self.scale_layers),
            "latency_cycles": self.latency_cycles,
            "commit": COMMIT_RULE,
            "errors": "SLVERR, register unchanged: a value outside lo..hi, a write to a read-only "
            "or unmapped address, a partial (WSTRB != 0xF) or unaligned write, COMMIT != 1; "
            "SLVERR with data 0 on reads of unmapped or write-only addresses",
            "registers": [r.to_json() for r in self.registers],
        }

    @classmethod
    def from_json(cls, doc: Any) -> RegisterMap:
        """The map of ``to_json``; a malformed document raises DataFormatError."""
        try:
            if doc.get("format") != MAP_FORMAT or doc.get("version") != MAP_VERSION:
                raise DataFormatError(f"not an {MAP_FORMAT} v{MAP_VERSION} register map")
            regs = tuple(
                Register(**{**r, "reset": tuple(int(v) for v in r["reset"])})
                for r in doc["registers"]
            )
            return cls(
                doc["network"],
                regs,
                doc["score_field"],
                Fixed.from_json(doc["score"], "registers.score"),
                tuple(doc["scale_layers"]),
                int(doc["latency_cycles"]),
            )
        except (AttributeError, KeyError, TypeError) as exc:
            raise DataFormatError(f"malformed register map: {exc!r}") from exc


# ---- the IR side: which layers the registers replace ------------------------------------


@dataclass(frozen=True)
class Scaling:
    """The leading ``scale`` (and the ``quantize`` after it) taken out of the constant core."""

    scale: Layer
    quantize: Layer | None
    x: Fixed  # the network input's format
    scale_out: Fixed  # the scale op's output format
    out: Fixed  # the format the core reads (the quantize output, else the scale output)
    shift_lo: int
    shift_hi: int

    @property
    def layer_names(self) -> tuple[str, ...]:
        return (self.scale.name,) + ((self.quantize.name,) if self.quantize else ())


def shift_range(net: QNet, scale: Layer) -> tuple[int, int]:
    """Run-time shifts the bank accepts: from min(0, IR shifts) to max(IR shifts, the scale
    output's frac_bits): up to frac_bits every scaled value lands on the output grid unrounded."""
    sh = scale.arrays["shift"].astype(np.int64)
    return min(0, int(sh.min())), max(int(sh.max()), net.tensors[scale.output].fixed.frac_bits)


def split_scaling(net: QNet) -> tuple[Scaling | None, QNet]:
    """(the run-time scaling, the rest of the IR for the constant core); (None, net) when the
    network does not start with a ``scale`` of its input."""
    layers = net.layers
    if not layers or layers[0].op != "scale" or layers[0].input != net.inputs[0]:
        return None, net
    scale = layers[0]
    readers = [lay for lay in layers if lay.input == scale.output]
    quant = None
    if (
        len(layers) > 1
        and layers[1].op == "quantize"
        and layers[1].input == scale.output
        and len(readers) == 1
        and scale.output not in net.outputs
    ):
        quant = layers[1]
    elif len(readers) > 1 or scale.output in net.outputs:
        raise DataFormatError(
            f"layer {scale.name!r}: run-time scaling needs the scale output read by one layer only"
        )
    last = quant or scale
    rest_layers = layers[2:] if quant else layers[1:]
    if last.output in net.outputs or not rest_layers:
        raise DataFormatError(f"{net.name!r}: nothing after the input scaling to build a core of")
    dropped = {net.inputs[0], scale.output} - {last.output}
    rest = QNet(
        name=net.name,
        tensors={k: v for k, v in net.tensors.items() if k not in dropped},
        layers=tuple(rest_layers),
        inputs=(last.output,),
        outputs=net.outputs,
        provenance=net.provenance,
    )
    lo, hi = shift_range(net, scale)
    x = net.input_specs[0].fixed
    scale_out = net.tensors[scale.output].fixed
    return Scaling(scale, quant, x, scale_out, net.tensors[last.output].fixed, lo, hi), rest


def with_scaling(
    net: QNet, offset: Sequence[int] | np.ndarray, shift: Sequence[int] | np.ndarray
) -> QNet:
    """The IR with its input scale's offsets and shifts replaced (same formats): what the
    firmware computes after those values are committed."""
    scaling, _ = split_scaling(net)
    if scaling is None:
        raise RegisterError(f"{net.name!r} does not start with a scale op")
    lay = scaling.scale
    new = dataclasses.replace(
        lay,
        arrays={
            "offset": np.asarray(offset, dtype=np.int64).copy(),
            "shift": np.asarray(shift, dtype=np.int64).copy(),
        },
    )
    return dataclasses.replace(net, layers=(new, *net.layers[1:]))


def _signed_width(lo: int, hi: int) -> int:
    w = 1
    while not (-(1 << (w - 1)) <= lo and hi <= (1 << (w - 1)) - 1):
        w += 1
    return w


def register_map(
    net: QNet, n_seeds: int, latency_cycles: int, scaling: Scaling | None
) -> RegisterMap:
    """The register map of ``net`` built with ``n_seeds`` threshold slots."""
    if not 1 <= n_seeds <= MAX_SEEDS:
        raise ConfigError(f"seeds: between 1 and {MAX_SEEDS} threshold registers, got {n_seeds}")
    out0 = net.output_specs[0]
    score = out0.fixed
    if score.width > 31:
        raise DataFormatError(f"score {out0.name!r} is {score.width} bits; registers hold <= 31")
    t_lo, t_hi = score.min_int - 1, score.max_int
    tw = _signed_width(t_lo, t_hi)

    def ctrl(name: str, access: str, reset: int, doc: str, hi: int = 0xFFFFFFFF) -> Register:
        addr = {**CONTROL, **INFO}[name]
        return Register(name, addr, 1, 32, False, 0, access, 0, hi, (reset,), doc)

    n_feat = net.input_specs[0].size if scaling is not None else 0
    regs = [
        ctrl("ID", "ro", ID_VALUE, 'constant 0x4C314652 ("L1FR")'),
        ctrl("MAP_VERSION", "ro", MAP_VERSION, "version of this register map layout"),
        ctrl("VERSION", "ro", 0, "commits so far (wraps at 2**32): the set new events get"),
        ctrl("COMMIT", "wo", 0, "write 1: the shadow set becomes active (see commit)", 1),
        ctrl("STATUS", "ro", 0, "bit 0: a commit is pending (thresholds not switched yet)"),
        ctrl("N_SEEDS", "ro", n_seeds, "threshold registers"),
        ctrl("N_FEATURES", "ro", n_feat, "OFFSET/SHIFT registers (0: no run-time scaling)"),
        Register(
            "THRESHOLD",
            THRESHOLD_BASE,
            n_seeds,
            tw,
            True,
            score.frac_bits,
            "rw",
            t_lo,
            t_hi,
            (t_hi,) * n_seeds,
            f"seed bit i = {out0.name} > THRESHOLD[i], both integers on the score's grid "
            f"(frac_bits {score.frac_bits}); {t_hi} never fires (reset), {t_lo} always fires",
        ),
    ]
    if scaling is not None:
        lay = scaling.scale
        of = lay.array_formats["offset"]
        regs.append(
            Register(
                "OFFSET",
                OFFSET_BASE,
                n_feat,
                of.width,
                of.signed,
                of.frac_bits,
                "rw",
                of.min_int,
                of.max_int,
                tuple(int(v) for v in lay.arrays["offset"]),
                f"per-feature offset of {lay.name!r} in its format {of.hls_type()}",
            )
        )
        regs.append(
            Register(
                "SHIFT",
                SHIFT_BASE,
                n_feat,
                _signed_width(scaling.shift_lo, scaling.shift_hi),
                True,
                0,
                "rw",
                scaling.shift_lo,
                scaling.shift_hi,
                tuple(int(v) for v in lay.arrays["shift"]),
                f"per-feature shift of {lay.name!r}: (x - offset) * 2**-shift",
            )
        )
    if n_feat > REGION_WORDS:
        raise DataFormatError(f"{n_feat} input features; the register map holds {REGION_WORDS}")
    return RegisterMap(
        net.name,
        tuple(regs),
        f"{out0.name}[0]",
        score,
        scaling.layer_names if scaling else (),
        latency_cycles,
    )


class RegisterClient:
    """Seed thresholds and input scaling written through a register port with one map: the
    PYNQ driver's MMIO on a board, the RTL backend's simulated AXI4-Lite bus in tests."""

    def __init__(self, rmap: RegisterMap, bus: RegisterBus):
        self.map = rmap
        self.bus = bus

    def set_thresholds(self, thresholds: Sequence[float], commit: bool = True) -> None:
        """Real-valued thresholds, one per seed slot (unused slots never fire)."""
        self._write(self.map.threshold_writes(thresholds), commit)

    def set_scaling(self, offset: Sequence[int], shift: Sequence[int], commit: bool = True) -> None:
        """The input scale's integer offsets (in the IR's offset format) and shifts."""
        self._write(self.map.scale_writes(offset, shift), commit)

    def commit(self) -> None:
        self.bus.write(*self.map.commit_write())

    def read(self, name: str, index: int = 0) -> int:
        """The integer value of register ``name[index]`` (the shadow set for parameters)."""
        return self.map.decode(name, self.bus.read(self.map.reg(name).addr(index)))

    @property
    def version(self) -> int:
        return self.read("VERSION")

    def _write(self, writes: list[tuple[int, int]], commit: bool) -> None:
        for addr, word in writes:
            self.bus.write(addr, word)
        if commit:
            self.commit()


class RecordingBus:
    """A register port that keeps the last word written to each address, in first-write order,
    for a simulation that replays them through AXI4-Lite; reads return what was written."""

    def __init__(self, rmap: RegisterMap):
        self.map = rmap
        self.words: dict[int, int] = {}
        self.commits = 0

    def write(self, offset: int, value: int) -> None:
        if (offset, value) == self.map.commit_write():
            self.commits += 1
        else:
            self.words[offset] = int(value) & 0xFFFFFFFF

    def read(self, offset: int) -> int:
        if offset == self.map.reg("VERSION").address:
            return self.commits
        return self.words.get(offset, 0)

    def replay(self) -> list[tuple[int, int]]:
        """The writes (then COMMIT) that bring a freshly reset bank to the committed state."""
        return [*self.words.items(), self.map.commit_write()] if self.commits else []
