"""The bit-exact emulator over event files: scores per model and, with a menu, seed bits.

Events stream through in chunks (bounded memory), every model's emulator runs on each chunk,
and the results go to a ROOT file (TTree ``Events``) or an HDF5 file with the same columns:
``run``, ``event``, ``seq``, ``score_<model>`` (float64, the exact real value of the model's
first output, as the daemon scores events), and with a menu ``seed_bits`` (uint32, bit i =
seed i) plus one boolean column per seed, named after the seed. ``seq`` is the event's row in
the input file: the sequence number prescales read, as when the daemon replays the file from
its first event. ``check_file`` compares a fresh emulation with such a stored reference. The
output files themselves are written and read by ``models.emulation_output``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.errors import ConfigError, DataFormatError
from l1forge.fileio import sha256_file
from l1forge.models import qnet
from l1forge.models.emulation_output import (
    OUTPUT_FORMAT,
    OUTPUT_VERSION,
    OutputWriter,
    open_output,
    output_kind,
)
from l1forge.models.emulator import Emulator
from l1forge.models.eventfiles import (
    N_INPUTS,
    EventChunk,
    EventFile,
    open_event_file,
)
from l1forge.models.qnet import QNet
from l1forge.online.datapath.menu import Menu, seed_counts
from l1forge.records import Comparison

log = logging.getLogger(__name__)

DEFAULT_CHUNK_EVENTS = 65_536
FIXED_COLUMNS = ("run", "event", "seq")


@dataclass(frozen=True)
class Model:
    """A named network: its IR, loaded and validated, and the sha256 of its JSON file."""

    name: str
    path: Path
    net: QNet
    sha256: str


def load_models(specs: Sequence[str]) -> list[Model]:
    """Models from ``NAME=IR.json`` (or a bare ``IR.json``, named after the network)."""
    if not specs:
        raise ConfigError("no model given: pass --model NAME=IR.json")
    models: list[Model] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        net = qnet.load(path)
        name = name or net.name
        if not name.isidentifier():
            raise ConfigError(
                f"model {spec!r}: the name must be an identifier (letters, _, digits)"
            )
        if any(m.name == name for m in models):
            raise ConfigError(f"model {name!r} is given twice")
        models.append(Model(name, Path(path), net, sha256_file(path)))
    return models


def check_inputs(models: Sequence[Model], ef: EventFile) -> None:
    """Every model must take one input tensor of the file's 57 integers per event."""
    for m in models:
        sizes = [s.size for s in m.net.input_specs]
        if sizes != [N_INPUTS]:
            raise DataFormatError(
                f"{m.path}: network {m.name!r} takes inputs of sizes {sizes}, the events in "
                f"{ef.path} have {N_INPUTS} features (19 objects x pT, eta, phi)"
            )


def check_menu(menu: Menu, models: Sequence[Model], where: str | Path) -> None:
    """The menu's models must all be given and every seed must have a threshold."""
    try:
        menu.check_models(m.name for m in models)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    for s in menu.seeds:
        if not s.zero_bias and not np.isfinite(s.threshold):
            raise ConfigError(
                f"{where}: seed {s.name!r} has no threshold; calibrate the menu first "
                "(`l1forge emulate calibrate`)"
            )
    taken = {*FIXED_COLUMNS, "seed_bits", *(score_column(m.name) for m in models)}
    clash = [s.name for s in menu.seeds if s.name in taken]
    if clash:
        raise ConfigError(f"{where}: seed names {clash} clash with output columns {sorted(taken)}")


def load_menu(path: str | Path) -> Menu:
    """A menu JSON file (``Menu.to_json``, what ``l1forge online set-menu`` takes)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"menu file not found: {path}")
    try:
        return Menu.from_json(path.read_text())
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def score_column(model: str) -> str:
    return f"score_{model}"


@dataclass
class ChunkResult:
    """Emulated events of one chunk."""

    start: int
    run: np.ndarray
    event: np.ndarray
    label: np.ndarray
    scores: dict[str, np.ndarray]  # model -> float64 (n,)
    seed_bits: np.ndarray | None

    @property
    def seq(self) -> np.ndarray:
        return np.arange(self.start, self.start + len(self.run), dtype=np.uint64)

    def columns(self, menu: Menu | None) -> dict[str, np.ndarray]:
        cols = {"run": self.run, "event": self.event, "seq": self.seq}
        cols |= {score_column(k): v for k, v in self.scores.items()}
        if menu is not None and self.seed_bits is not None:
            cols["seed_bits"] = self.seed_bits
            for i, name in enumerate(menu.names):
                cols[name] = ((self.seed_bits >> np.uint32(i)) & np.uint32(1)).astype(bool)
        return cols


def _prefetched(chunks: Iterator[EventChunk]) -> Iterator[EventChunk]:
    """The chunks, the next one read (and decompressed) on a thread while this one emulates."""
    with ThreadPoolExecutor(1, thread_name_prefix="l1f-read") as pool:
        ahead = pool.submit(next, chunks, None)
        while (chunk := ahead.result()) is not None:
            ahead = pool.submit(next, chunks, None)
            yield chunk


@dataclass
class Emulation:
    """The emulators of a set of models (and a menu), run chunk by chunk over event files."""

    models: Sequence[Model]
    menu: Menu | None = None
    chunk_events: int = DEFAULT_CHUNK_EVENTS
    progress: bool = True
    emulator_seconds: float = 0.0
    _emulators: dict[str, Emulator] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.chunk_events < 1:
            raise ConfigError(f"chunk_events must be >= 1, got {self.chunk_events}")
        if self.menu is not None:
            check_menu(self.menu, self.models, "menu")
        self._emulators = {m.name: Emulator(m.net) for m in self.models}

    def run(self, ef: EventFile) -> Iterator[ChunkResult]:
        """Scores (and seed bits) of every chunk of ``ef``, in file order."""
        from tqdm import tqdm

        check_inputs(self.models, ef)
        with tqdm(
            total=ef.n_events,
            unit="ev",
            unit_scale=True,
            desc=ef.path.name,
            disable=not self.progress,
        ) as bar:
            for chunk in _prefetched(ef.chunks(self.chunk_events)):
                scores = {}
                for m in self.models:
                    fmt = m.net.input_specs[0].fixed
                    if not fmt.contains(chunk.inputs):
                        raise DataFormatError(
                            f"{ef.path}: rows {chunk.start}..{chunk.start + len(chunk) - 1} hold "
                            f"inputs outside {m.name!r}'s input format {fmt.hls_type()} "
                            f"(integers {fmt.min_int}..{fmt.max_int})"
                        )
                    t0 = time.perf_counter()
                    out = self._emulators[m.name].run_all(chunk.inputs)[m.net.outputs[0]]
                    self.emulator_seconds += time.perf_counter() - t0
                    scores[m.name] = m.net.output_specs[0].fixed.to_float(out[:, 0])
                result = ChunkResult(chunk.start, chunk.run, chunk.event, chunk.label, scores, None)
                if self.menu is not None:
                    result.seed_bits = self.menu.decide(scores, result.seq)
                bar.update(len(chunk))
                yield result

    def meta(self, ef: EventFile) -> dict[str, Any]:
        return {
            "format": OUTPUT_FORMAT,
            "version": OUTPUT_VERSION,
            "events_file": str(ef.path),
            "n_events": ef.n_events,
            "models": {m.name: {"ir": str(m.path), "sha256": m.sha256} for m in self.models},
            "menu": self.menu.to_json() if self.menu is not None else None,
            "seq": "row of the event in events_file (the prescales' sequence number)",
        }

    def close(self) -> None:
        for emu in self._emulators.values():
            emu.close()

    def __enter__(self) -> Emulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _column_dtypes(models: Sequence[Model], menu: Menu | None) -> dict[str, np.dtype]:
    cols: dict[str, np.dtype] = {
        "run": np.dtype(np.uint64),
        "event": np.dtype(np.uint64),
        "seq": np.dtype(np.uint64),
    }
    cols |= {score_column(m.name): np.dtype(np.float64) for m in models}
    if menu is not None:
        cols["seed_bits"] = np.dtype(np.uint32)
        cols |= {name: np.dtype(bool) for name in menu.names}
    return cols


def emulate_file(
    models: Sequence[Model],
    events: str | Path,
    out: str | Path,
    menu: Menu | None = None,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    progress: bool = True,
) -> dict[str, Any]:
    """Emulate every model over ``events`` into ``out`` (.root or .h5); returns a summary."""
    t0 = time.perf_counter()
    output_kind(Path(out))
    ef = open_event_file(events)
    with Emulation(models, menu, chunk_events, progress) as emu:
        check_inputs(models, ef)
        writer = OutputWriter(out, _column_dtypes(models, menu), emu.meta(ef))
        counts = np.zeros(len(menu.seeds) if menu else 0, dtype=np.int64)
        try:
            for res in emu.run(ef):
                writer.extend(res.columns(menu))
                if menu is not None and res.seed_bits is not None:
                    counts += seed_counts(res.seed_bits, len(menu.seeds))
        except BaseException:
            writer.abort()
            raise
        writer.close()
    seconds = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "events": str(ef.path),
        "out": str(writer.path),
        "format": writer.kind,
        "n_events": writer.n_events,
        "models": {m.name: {"ir": str(m.path), "sha256": m.sha256} for m in models},
        "seconds": round(seconds, 3),
        "events_per_s": round(writer.n_events / seconds) if seconds > 0 else None,
        "emulator_events_per_s": (
            round(writer.n_events * len(models) / emu.emulator_seconds)
            if emu.emulator_seconds > 0
            else None
        ),
    }
    if menu is not None:
        summary["fired"] = dict(zip(menu.names, counts.tolist(), strict=True))
    return summary


@dataclass(frozen=True, kw_only=True)
class CheckResult(Comparison):
    """A fresh emulation against a stored reference: differing events and how they differ."""

    n_events: int
    n_reference: int
    problems: tuple[str, ...]  # structural differences (columns, event counts)

    @property
    def ok(self) -> bool:
        return super().ok and not self.problems


def _describe(i: int, names: Sequence[str], got: dict, ref: dict, bad: np.ndarray) -> str:
    row = int(bad[i])
    parts = [
        f"{k} {got[k][row]!r} != reference {ref[k][row]!r}"
        for k in names
        if got[k][row] != ref[k][row]
    ]
    run, ev = int(got["run"][row]), int(got["event"][row])
    return f"event seq {int(got['seq'][row])} (run {run}, event {ev}): " + "; ".join(parts)


def check_file(
    models: Sequence[Model],
    events: str | Path,
    reference: str | Path,
    menu: Menu | None = None,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    max_report: int = 10,
    progress: bool = True,
) -> CheckResult:
    """Emulate ``events`` again and compare scores (exactly) and seed bits with ``reference``."""
    ref = open_output(reference)
    ef = open_event_file(events)
    want = _column_dtypes(models, menu)
    problems = []
    missing = [c for c in want if c not in ref.columns]
    extra = [c for c in ref.columns if c not in want]
    if missing:
        problems.append(f"{ref.path} lacks columns {missing} (models or menu differ)")
    if extra:
        problems.append(f"{ref.path} has columns {extra} this emulation does not produce")
    if ref.n_events != ef.n_events:
        problems.append(f"{ref.path} has {ref.n_events} events, {ef.path} has {ef.n_events}")
    names = [c for c in want if c in ref.columns]
    first: list[str] = []
    n_bad = 0
    with Emulation(models, menu, chunk_events, progress) as emu:
        for res in emu.run(ef):
            stop = min(res.start + len(res.run), ref.n_events)
            if stop <= res.start:
                break
            got = {k: v[: stop - res.start] for k, v in res.columns(menu).items()}
            exp = ref.read(names, res.start, stop)
            diff = np.zeros(stop - res.start, dtype=bool)
            for k in names:
                diff |= got[k] != exp[k]
            bad = np.flatnonzero(diff)
            n_bad += len(bad)
            for i in range(min(len(bad), max_report - len(first))):
                first.append(_describe(i, names, got, exp, bad))
    return CheckResult(
        n_events=ef.n_events,
        n_reference=ref.n_events,
        n_differing=n_bad,
        first_differences=tuple(first),
        problems=tuple(problems),
    )


@dataclass(frozen=True)
class FileScores:
    """Every event's scores (and seed bits) of one file, held in memory (no inputs kept)."""

    path: Path
    scores: dict[str, np.ndarray]
    seed_bits: np.ndarray | None
    label: np.ndarray
    processes: tuple[str, ...]

    def by_process(self) -> dict[str, np.ndarray]:
        """Seed bits split by process name (processes with no events left out)."""
        assert self.seed_bits is not None
        out = {}
        for i, name in enumerate(self.processes):
            sel = self.seed_bits[self.label == i]
            if len(sel):
                out[name] = sel
        return out


def emulate_scores(
    models: Sequence[Model],
    events: str | Path,
    menu: Menu | None = None,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    progress: bool = True,
) -> FileScores:
    """Scores (and with a menu, seed bits) of every event of a file."""
    ef = open_event_file(events)
    parts: list[ChunkResult] = []
    with Emulation(models, menu, chunk_events, progress) as emu:
        parts.extend(emu.run(ef))
    if not parts:
        raise DataFormatError(f"{ef.path}: no events")
    scores = {m.name: np.concatenate([p.scores[m.name] for p in parts]) for m in models}
    bits = None if menu is None else np.concatenate([p.seed_bits for p in parts])
    label = np.concatenate([p.label for p in parts])
    return FileScores(ef.path, scores, bits, label, ef.processes)
