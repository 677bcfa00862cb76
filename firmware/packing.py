"""The packed bit layout of a network's input and output buses, and the only code that packs them.

Bus convention (the same for the trigger wrapper, the AXI-stream wrapper, benches and drivers):
tensors in the IR's input (output) order, elements in index order, element 0 of the first tensor
at bus bit 0; each element is its tensor's fixed-point integer in two's complement (signed) or
plain binary (unsigned), ``width`` bits wide. On AXI-stream a bus is padded with zeros to a whole
number of ``beat_bits``-wide beats and sent least significant beat first; bytes within a beat
are little-endian (TDATA bit 0 = byte 0 bit 0), so a bus is also a little-endian byte string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.errors import DataFormatError
from l1forge.models.qnet import QNet

FORMAT_NAME = "l1forge-packing"
FORMAT_VERSION = 1
DEFAULT_BEAT_BITS = 64
SEED_SLOT = "seed_bits"  # the output slot of a register build's seed bits (one bit each)


@dataclass(frozen=True)
class TensorSlot:
    """One tensor's run of equal-width fields on a bus."""

    tensor: str
    size: int
    width: int
    signed: bool
    frac_bits: int
    offset: int  # bus bit of element 0

    @property
    def bits(self) -> int:
        return self.size * self.width

    def fields(self) -> list[dict[str, Any]]:
        return [
            {
                "name": f"{self.tensor}[{j}]",
                "tensor": self.tensor,
                "index": j,
                "offset": self.offset + j * self.width,
                "width": self.width,
                "signed": self.signed,
                "frac_bits": self.frac_bits,
            }
            for j in range(self.size)
        ]


@dataclass(frozen=True)
class BusLayout:
    """The fields of one bus (input or output) in bit order."""

    slots: tuple[TensorSlot, ...]

    @property
    def bits(self) -> int:
        return sum(s.bits for s in self.slots)

    @property
    def n_values(self) -> int:
        return sum(s.size for s in self.slots)

    def bytes_for(self, beat_bits: int) -> int:
        """Bytes of one bus padded to whole beats."""
        return beats(self.bits, beat_bits) * beat_bits // 8

    def to_json(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "values": self.n_values,
            "tensors": [
                {k: getattr(s, k) for k in ("tensor", "size", "width", "signed", "frac_bits")}
                | {"offset": s.offset}
                for s in self.slots
            ],
            "fields": [f for s in self.slots for f in s.fields()],
        }


@dataclass(frozen=True)
class PackingSpec:
    """Input and output bus layouts of one network, plus the AXI-stream beat width."""

    network: str
    input: BusLayout
    output: BusLayout
    beat_bits: int = DEFAULT_BEAT_BITS
    registers: dict[str, Any] | None = None  # the register map (``registers.RegisterMap``)

    def __post_init__(self) -> None:
        if self.beat_bits < 8 or self.beat_bits % 8 or self.beat_bits & (self.beat_bits - 1):
            raise DataFormatError(
                f"beat_bits must be a power of two and at least 8, got {self.beat_bits}"
            )

    @property
    def beats_per_input(self) -> int:
        return beats(self.input.bits, self.beat_bits)

    @property
    def beats_per_output(self) -> int:
        return beats(self.output.bits, self.beat_bits)

    @property
    def n_seed_bits(self) -> int:
        """Seed bits at the end of the output bus (0 without a register bank)."""
        return sum(s.size for s in self.output.slots if s.tensor == SEED_SLOT)

    @property
    def n_net_outputs(self) -> int:
        """Output values of the network itself (the output bus without the seed bits)."""
        return self.output.n_values - self.n_seed_bits

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "network": self.network,
            "bit_order": "element 0 of the first tensor at bus bit 0; two's complement if signed",
            "input": self.input.to_json(),
            "output": self.output.to_json(),
            "axis": {
                "beat_bits": self.beat_bits,
                "beat_order": "least significant beat first; TLAST on the last beat of a frame",
                "byte_order": "little-endian within a beat",
                "beats_per_input": self.beats_per_input,
                "beats_per_output": self.beats_per_output,
                "bytes_per_input": self.input.bytes_for(self.beat_bits),
                "bytes_per_output": self.output.bytes_for(self.beat_bits),
            },
        } | ({"registers": self.registers} if self.registers is not None else {})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path


def beats(bits: int, beat_bits: int) -> int:
    return max(1, -(-bits // beat_bits))


def _bus(net: QNet, names: tuple[str, ...]) -> BusLayout:
    slots, offset = [], 0
    for name in names:
        spec = net.tensors[name]
        f = spec.fixed
        slots.append(TensorSlot(name, spec.size, f.width, f.signed, f.frac_bits, offset))
        offset += spec.size * f.width
    return BusLayout(tuple(slots))


def packing_from_qnet(net: QNet, beat_bits: int = DEFAULT_BEAT_BITS) -> PackingSpec:
    """The bus layouts implied by the IR's input and output tensor formats."""
    return PackingSpec(net.name, _bus(net, net.inputs), _bus(net, net.outputs), beat_bits)


def with_seed_bits(spec: PackingSpec, n_seeds: int, registers: dict[str, Any]) -> PackingSpec:
    """``spec`` with ``n_seeds`` one-bit seed fields after the network's outputs, and the map."""
    if any(s.tensor == SEED_SLOT for s in (*spec.input.slots, *spec.output.slots)):
        raise DataFormatError(f"tensor name {SEED_SLOT!r} is reserved for the seed bits")
    seeds = TensorSlot(SEED_SLOT, n_seeds, 1, False, 0, spec.output.bits)
    out = BusLayout((*spec.output.slots, seeds))
    return PackingSpec(spec.network, spec.input, out, spec.beat_bits, registers)


def load(path: str | Path) -> PackingSpec:
    """Read a packing JSON written by ``PackingSpec.save``; malformed files are refused."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT_NAME or doc.get("version") != FORMAT_VERSION:
            raise DataFormatError(f"{path}: not an {FORMAT_NAME} v{FORMAT_VERSION} file")
        buses = []
        for side in ("input", "output"):
            slots = tuple(
                TensorSlot(
                    t["tensor"], t["size"], t["width"], t["signed"], t["frac_bits"], t["offset"]
                )
                for t in doc[side]["tensors"]
            )
            buses.append(BusLayout(slots))
        return PackingSpec(
            doc["network"], buses[0], buses[1], doc["axis"]["beat_bits"], doc.get("registers")
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataFormatError(f"{path}: unreadable packing spec: {exc!r}") from exc


def pack(x: np.ndarray, bus: BusLayout, n_bytes: int | None = None) -> np.ndarray:
    """Integer values ``(N, n_values)`` -> little-endian bus bytes ``uint8 (N, n_bytes)``.

    Values must fit their field (no silent wrapping); ``n_bytes`` pads, by default to whole bytes.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != bus.n_values or not np.issubdtype(x.dtype, np.integer):
        raise DataFormatError(f"pack expects integers of shape (N, {bus.n_values}), got {x.shape}")
    n_bytes = n_bytes if n_bytes is not None else -(-bus.bits // 8)
    if n_bytes * 8 < bus.bits:
        raise DataFormatError(f"{n_bytes} bytes cannot hold a {bus.bits}-bit bus")
    bits = np.zeros((len(x), n_bytes * 8), dtype=np.uint8)
    col = 0
    for s in bus.slots:
        v = x[:, col : col + s.size].astype(np.int64)
        lo = -(1 << (s.width - 1)) if s.signed else 0
        hi = (1 << (s.width - 1)) - 1 if s.signed else (1 << s.width) - 1
        if v.size and (v.min() < lo or v.max() > hi):
            raise DataFormatError(f"values of {s.tensor!r} outside {lo}..{hi} ({s.width} bits)")
        shifts = np.arange(s.width, dtype=np.int64)
        field_bits = (v[:, :, None] >> shifts) & 1  # arithmetic shift: two's complement bits
        bits[:, s.offset : s.offset + s.bits] = field_bits.reshape(len(x), s.bits)
        col += s.size
    return np.packbits(bits, axis=1, bitorder="little")


def unpack(data: np.ndarray, bus: BusLayout) -> np.ndarray:
    """Little-endian bus bytes ``uint8 (N, n_bytes)`` -> integer values ``int64 (N, n_values)``."""
    data = np.asarray(data)
    if data.ndim != 2 or data.dtype != np.uint8 or data.shape[1] * 8 < bus.bits:
        raise DataFormatError(
            f"unpack expects uint8 of shape (N, >= {-(-bus.bits // 8)}), got {data.dtype} "
            f"{data.shape}"
        )
    bits = np.unpackbits(data, axis=1, bitorder="little")
    out = np.empty((len(data), bus.n_values), dtype=np.int64)
    col = 0
    for s in bus.slots:
        fb = bits[:, s.offset : s.offset + s.bits].reshape(len(data), s.size, s.width)
        v = fb.astype(np.int64) @ (np.int64(1) << np.arange(s.width, dtype=np.int64))
        if s.signed:
            v = v - (fb[:, :, -1].astype(np.int64) << s.width)
        out[:, col : col + s.size] = v
        col += s.size
    return out


def to_ints(data: np.ndarray) -> list[int]:
    """Bus bytes ``uint8 (N, n_bytes)`` -> one Python integer per row (for HDL bus ports)."""
    return [int.from_bytes(row.tobytes(), "little") for row in np.asarray(data, dtype=np.uint8)]


def from_ints(values: list[int], n_bytes: int) -> np.ndarray:
    """Python integers (bus values read from HDL) -> bus bytes ``uint8 (N, n_bytes)``."""
    buf = b"".join(int(v).to_bytes(n_bytes, "little") for v in values)
    return np.frombuffer(buf, dtype=np.uint8).reshape(len(values), n_bytes).copy()
