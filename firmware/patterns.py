"""Pattern files: the trigger wrapper's bus, one clock per line, as plain text for board tests.

A pattern file is a header of ``# key: value`` lines, then one line per clock:
``<valid> <data>``, ``valid`` 0 or 1 and ``data`` the bus word in hexadecimal, most significant
digit first, exactly ``ceil(bus_bits / 4)`` digits (the bus of ``packing.json``: element 0 of
the first tensor at bit 0). The header names the packing JSON (and its sha256) and the qnet
IR's sha256 (of its JSON file), the bus width and the number of clock lines, so a replay
against other firmware, a truncated file or a word of the wrong width is refused. Input files
carry the events; expected-output files carry the emulator's outputs, one valid line per event;
captured files (from a board or a simulator) carry one line per clock, and outputs are matched
to events by order of their valid lines (fixed latency, no reordering).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.errors import DataFormatError
from l1forge.fileio import sha256_file
from l1forge.firmware import packing
from l1forge.firmware.packing import BusLayout, PackingSpec
from l1forge.records import Comparison

FORMAT_NAME = "l1forge-pattern"
FORMAT_VERSION = 1
KINDS = ("input", "output")
PACKING_FILE = "packing.json"
INPUT_FILE = "input.pattern"
EXPECTED_FILE = "expected.pattern"
# header keys write_pattern sets itself
RESERVED = ("format", "kind", "bus_bits", "hex_digits", "lines", "line_format")


@dataclass(frozen=True)
class Pattern:
    """A pattern file read back: its header, a valid flag and a bus word per clock line."""

    path: Path
    header: dict[str, str]
    valid: np.ndarray  # bool (n_lines,)
    words: tuple[int, ...]  # the bus word of each line
    first_line: int  # 1-based line number of the first clock line

    @property
    def kind(self) -> str:
        return self.header["kind"]

    @property
    def bus_bits(self) -> int:
        return int(self.header["bus_bits"])

    def valid_words(self) -> list[int]:
        """The words of valid lines, in order (one per event)."""
        return [w for w, v in zip(self.words, self.valid, strict=True) if v]

    def valid_lines(self) -> np.ndarray:
        """1-based line numbers in the file of the valid clock lines."""
        return self.first_line + np.flatnonzero(self.valid)


def hex_digits(bits: int) -> int:
    return max(1, -(-bits // 4))


def write_pattern(
    path: str | Path,
    kind: str,
    valid: np.ndarray,
    words: list[int],
    bus: BusLayout,
    header: dict[str, Any],
) -> Path:
    """Write a pattern file of ``kind`` ("input" or "output"); ``header`` must name
    ``network``, ``qnet_sha256``, ``packing`` and ``packing_sha256``."""
    if kind not in KINDS:
        raise ValueError(f"pattern kind must be one of {KINDS}")
    path = Path(path)
    digits = hex_digits(bus.bits)
    valid = np.asarray(valid, dtype=bool)
    if len(valid) != len(words):
        raise ValueError("one valid flag per word")
    named = ("network", "qnet_sha256", "packing", "packing_sha256")
    head = {
        "format": f"{FORMAT_NAME} {FORMAT_VERSION}",
        "kind": kind,
        **{k: header[k] for k in named},
        "bus_bits": bus.bits,
        "hex_digits": digits,
        "lines": len(words),
        **{k: v for k, v in header.items() if k not in (*named, *RESERVED)},
        "line_format": "<valid 0|1> <bus word, hexadecimal, most significant digit first>",
    }
    lines = [f"# {k}: {v}" for k, v in head.items()]
    lines += [f"{int(v)} {w:0{digits}x}" for v, w in zip(valid, words, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_pattern(path: str | Path, kind: str | None = None) -> Pattern:
    """Read and check a pattern file (format, kind, line count, every word's width)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"pattern file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: unreadable pattern file: {exc}") from exc
    header: dict[str, str] = {}
    body: list[tuple[int, str]] = []
    for no, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep and not body:
                header[key.strip()] = value.strip()
            continue
        if line.strip():
            body.append((no, line))
    if header.get("format") != f"{FORMAT_NAME} {FORMAT_VERSION}":
        raise DataFormatError(f"{path}: not an {FORMAT_NAME} v{FORMAT_VERSION} file (header)")
    need = ("kind", "network", "qnet_sha256", "packing", "packing_sha256", "bus_bits", "lines")
    missing = [k for k in need if k not in header]
    if missing:
        raise DataFormatError(f"{path}: header lacks {missing}")
    if header["kind"] not in KINDS or (kind is not None and header["kind"] != kind):
        raise DataFormatError(f"{path}: a {header['kind']!r} pattern, expected {kind!r}")
    bits, n_lines = int(header["bus_bits"]), int(header["lines"])
    if len(body) != n_lines:
        raise DataFormatError(
            f"{path}: {len(body)} clock lines, the header says {n_lines} (truncated?)"
        )
    digits = hex_digits(bits)
    valid = np.zeros(len(body), dtype=bool)
    words = []
    for i, (no, line) in enumerate(body):
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("0", "1"):
            raise DataFormatError(f"{path} line {no}: expected '<0|1> <hex word>', got {line!r}")
        if len(parts[1]) != digits:
            raise DataFormatError(
                f"{path} line {no}: word of {len(parts[1])} hex digits, the {bits}-bit bus "
                f"needs {digits} (wrong bus width?)"
            )
        try:
            w = int(parts[1], 16)
        except ValueError as exc:
            raise DataFormatError(f"{path} line {no}: {parts[1]!r} is not hexadecimal") from exc
        if w >> bits:
            raise DataFormatError(f"{path} line {no}: word wider than the {bits}-bit bus")
        valid[i] = parts[0] == "1"
        words.append(w)
    return Pattern(path, header, valid, tuple(words), body[0][0] if body else 0)


def check_header(p: Pattern, qnet_sha256: str, bus: BusLayout, packing_sha256: str) -> None:
    """The pattern must have been made for this IR and this bus."""
    if p.header["qnet_sha256"] != qnet_sha256:
        raise DataFormatError(
            f"{p.path}: made for qnet sha256 {p.header['qnet_sha256'][:16]}..., this IR is "
            f"{qnet_sha256[:16]}... (a different network)"
        )
    if p.bus_bits != bus.bits:
        raise DataFormatError(f"{p.path}: a {p.bus_bits}-bit bus, the packing has {bus.bits}")
    if p.header["packing_sha256"] != packing_sha256:
        raise DataFormatError(f"{p.path}: made with a different packing JSON (sha256 differs)")


def words_of(x: np.ndarray, bus: BusLayout) -> list[int]:
    """Integer values ``(N, n_values)`` -> one bus word per row."""
    return packing.to_ints(packing.pack(x, bus))


def write_patterns(
    qnet_path: str | Path,
    x: np.ndarray,
    out_dir: str | Path,
    spec: PackingSpec | None = None,
    source: str | None = None,
) -> dict[str, Path]:
    """``input.pattern`` (the events' packed inputs), ``expected.pattern`` (the emulator's
    packed outputs; a register build's seed bits as just after reset, all 0) and the
    ``packing.json`` they name, for integer inputs ``x``."""
    from l1forge.models import qnet
    from l1forge.models.emulator import Emulator

    net = qnet.load(qnet_path)
    spec = spec or packing.packing_from_qnet(net)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = spec.save(out / PACKING_FILE)
    with Emulator(net) as emu:
        y = reset_outputs(emu.run(np.asarray(x)), spec)
    header: dict[str, Any] = {
        "network": net.name,
        "qnet_sha256": sha256_file(qnet_path),
        "packing": PACKING_FILE,
        "packing_sha256": sha256_file(spec_path),
        "events": len(x),
    }
    if source:
        header["source"] = source
    ones = np.ones(len(x), dtype=bool)
    return {
        "packing": spec_path,
        "input": write_pattern(
            out / INPUT_FILE, "input", ones, words_of(x, spec.input), spec.input, header
        ),
        "expected": write_pattern(
            out / EXPECTED_FILE, "output", ones, words_of(y, spec.output), spec.output, header
        ),
    }


@dataclass(frozen=True, kw_only=True)
class PatternCheck(Comparison):
    """Captured outputs against expected ones, event by event."""

    n_expected: int
    n_captured: int

    @property
    def ok(self) -> bool:
        return super().ok and self.n_expected == self.n_captured


def compare_words(
    captured: Pattern, expected: list[int], bus: BusLayout, max_report: int = 10
) -> PatternCheck:
    """Match captured valid words to ``expected`` in order, naming the first differing events
    and the output fields that differ."""
    got = captured.valid_words()
    lines = captured.valid_lines()
    n = min(len(got), len(expected))
    bad = [i for i in range(n) if got[i] != expected[i]]
    first = []
    n_bytes = -(-bus.bits // 8)
    fields = [f for s in bus.slots for f in s.fields()]
    for i in bad[:max_report]:
        g, e = (
            packing.unpack(packing.from_ints([v], n_bytes), bus)[0] for v in (got[i], expected[i])
        )
        diff = [
            f"{fields[j]['name']}={int(g[j])} (expected {int(e[j])})"
            for j in range(len(g))
            if g[j] != e[j]
        ]
        first.append(
            f"event {i} (line {int(lines[i])} of {captured.path.name}): " + ", ".join(diff)
        )
    if len(got) != len(expected):
        first.append(
            f"{captured.path.name} has {len(got)} valid outputs for {len(expected)} events"
        )
    return PatternCheck(
        n_expected=len(expected),
        n_captured=len(got),
        n_differing=len(bad),
        first_differences=tuple(first),
    )


def compare_expected(captured_path: str | Path, expected_path: str | Path) -> PatternCheck:
    """A captured output pattern against an expected output pattern of the same IR and bus."""
    exp = read_pattern(expected_path, "output")
    cap = read_pattern(captured_path, "output")
    spec = _spec_beside(exp)
    check_header(cap, exp.header["qnet_sha256"], spec.output, exp.header["packing_sha256"])
    return compare_words(cap, exp.valid_words(), spec.output)


def compare_emulator(
    captured_path: str | Path, input_path: str | Path, qnet_path: str | Path
) -> PatternCheck:
    """A captured output pattern against the emulator run on the input pattern's events."""
    from l1forge.models import qnet
    from l1forge.models.emulator import Emulator

    sha = sha256_file(qnet_path)
    inp = read_pattern(input_path, "input")
    spec = _spec_beside(inp)
    check_header(inp, sha, spec.input, inp.header["packing_sha256"])
    cap = read_pattern(captured_path, "output")
    check_header(cap, sha, spec.output, inp.header["packing_sha256"])
    net = qnet.load(qnet_path)
    n_bytes = -(-spec.input.bits // 8)
    x = packing.unpack(packing.from_ints(inp.valid_words(), n_bytes), spec.input)
    with Emulator(net) as emu:
        y = reset_outputs(emu.run(x), spec)
    return compare_words(cap, words_of(y, spec.output), spec.output)


def reset_outputs(y: np.ndarray, spec: PackingSpec) -> np.ndarray:
    """The output bus values of a register build just after reset: the network's outputs (the
    IR's own scaling) and every seed bit 0 (reset thresholds never fire); ``y`` otherwise."""
    if not spec.n_seed_bits:
        return y
    return np.concatenate([y, np.zeros((len(y), spec.n_seed_bits), dtype=y.dtype)], axis=1)


def _spec_beside(p: Pattern) -> PackingSpec:
    """The packing JSON a pattern names, found beside it and checked against its sha256."""
    path = p.path.parent / p.header["packing"]
    if not path.is_file():
        raise DataFormatError(f"{p.path}: its packing JSON {path.name} is not beside it")
    if sha256_file(path) != p.header["packing_sha256"]:
        raise DataFormatError(f"{p.path}: {path} does not match the sha256 in its header")
    return packing.load(path)
