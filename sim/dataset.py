"""Event datasets: the in-memory EventSet and its chunked, compressed HDF5 file format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from l1forge.errors import DataFormatError, L1ForgeError
from l1forge.fileio import probe_writable
from l1forge.sim.l1objects import N_FEATURES, N_OBJECTS

FILE_FORMAT = "l1forge-events"
FILE_VERSION = 1
ARRAYS = {  # name -> (dtype, trailing shape)
    "objects_phys": (np.float32, (N_OBJECTS, N_FEATURES)),
    "objects_hw": (np.int32, (N_OBJECTS, N_FEATURES)),
    "run": (np.uint64, ()),
    "event": (np.uint64, ()),
    "label": (np.int16, ()),
    "weight": (np.float32, ()),
}


@dataclass(frozen=True)
class EventSet:
    """Events as Level-1 objects, with run/event numbers, process labels and weights.

    ``label`` indexes ``processes``; ``weight`` is the cross section per event in pb.
    """

    objects_phys: np.ndarray
    objects_hw: np.ndarray
    run: np.ndarray
    event: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    processes: tuple[str, ...]
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = len(self.run)
        for name, (dtype, shape) in ARRAYS.items():
            a = getattr(self, name)
            if a.dtype != dtype or a.shape != (n, *shape):
                raise DataFormatError(
                    f"EventSet.{name}: expected {np.dtype(dtype)} {(n, *shape)}, "
                    f"got {a.dtype} {a.shape}"
                )
        if n and (self.label.min() < 0 or self.label.max() >= len(self.processes)):
            raise DataFormatError("EventSet.label: values must index the processes tuple")

    def __len__(self) -> int:
        return len(self.run)

    @property
    def inputs(self) -> np.ndarray:
        """The 57 hardware-integer network inputs per event, int32 (N, 57)."""
        return self.objects_hw.reshape(len(self), N_OBJECTS * N_FEATURES)

    def select(self, mask: np.ndarray) -> EventSet:
        return EventSet(
            **{k: getattr(self, k)[mask] for k in ARRAYS},
            processes=self.processes,
            provenance=self.provenance,
        )

    def of_process(self, name: str) -> EventSet:
        if name not in self.processes:
            raise KeyError(f"no process {name!r} in this dataset ({', '.join(self.processes)})")
        return self.select(self.label == self.processes.index(name))


def concat_events(sets: list[EventSet]) -> EventSet:
    """One EventSet of several; labels are re-mapped onto the union of their processes."""
    if not sets:
        raise ValueError("concat_events needs at least one EventSet")
    processes: list[str] = []
    for s in sets:
        processes += [p for p in s.processes if p not in processes]
    labels = [
        np.array([processes.index(p) for p in s.processes], dtype=np.int16)[s.label]
        if len(s)
        else s.label
        for s in sets
    ]
    arrays = {k: np.concatenate([getattr(s, k) for s in sets]) for k in ARRAYS if k != "label"}
    prov = {"parts": [s.provenance for s in sets]} if len(sets) > 1 else sets[0].provenance
    return EventSet(
        **arrays, label=np.concatenate(labels), processes=tuple(processes), provenance=prov
    )


def check_writable(path: str | Path) -> Path:
    """Fail early, before any generation, if ``path`` cannot be written."""
    path = Path(path)
    try:
        probe_writable(path.parent)
    except OSError as exc:
        raise L1ForgeError(f"cannot write event file {path}: {exc.strerror or exc}") from exc
    return path


def write_events(path: str | Path, events: EventSet, chunk_events: int = 4096) -> Path:
    """Write ``events`` to an HDF5 file (gzip-compressed, chunked), provenance as JSON."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FILE_FORMAT
            f.attrs["version"] = FILE_VERSION
            f.attrs["processes"] = json.dumps(list(events.processes))
            f.attrs["provenance"] = json.dumps(events.provenance, default=str)
            for name in ARRAYS:
                a = getattr(events, name)
                chunks = (min(max(len(a), 1), chunk_events), *a.shape[1:])
                f.create_dataset(
                    name,
                    data=a,
                    chunks=chunks,
                    compression="gzip",
                    compression_opts=4,
                    shuffle=True,
                )
        tmp.replace(path)
    except OSError as exc:
        raise L1ForgeError(f"cannot write event file {path}: {exc.strerror or exc}") from exc
    return path


@contextmanager
def _open_checked(path: Path) -> Iterator[h5py.File]:
    """The event file opened for reading, its format, version and datasets checked; any
    HDF5 or key error inside the block becomes a DataFormatError naming the file."""
    if not path.is_file():
        raise DataFormatError(f"event file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FILE_FORMAT:
                raise DataFormatError(f"{path}: not an l1forge event file (format attribute)")
            if f.attrs.get("version") != FILE_VERSION:
                raise DataFormatError(
                    f"{path}: event file version {f.attrs.get('version')}, expected {FILE_VERSION}"
                )
            missing = [k for k in ARRAYS if k not in f]
            if missing:
                raise DataFormatError(f"{path}: missing datasets {missing}")
            yield f
    except DataFormatError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise DataFormatError(f"{path}: corrupt or unreadable event file: {exc}") from exc


def read_events(path: str | Path) -> EventSet:
    """Read and validate an event file; anything malformed raises DataFormatError."""
    path = Path(path)
    with _open_checked(path) as f:
        arrays = {k: f[k][...] for k in ARRAYS}
        processes = tuple(json.loads(f.attrs["processes"]))
        provenance = json.loads(f.attrs["provenance"])
    return EventSet(**arrays, processes=processes, provenance=provenance)


def event_file_length(path: str | Path) -> int:
    """Validate an event file's format and object layout without reading it; its event count."""
    path = Path(path)
    dtype, shape = ARRAYS["objects_hw"]
    with _open_checked(path) as f:
        n = len(f["event"])
        obj = f["objects_hw"]
        if obj.dtype != dtype or obj.shape != (n, *shape):
            raise DataFormatError(f"{path}: objects_hw is not {np.dtype(dtype)} {(n, *shape)}")
    return n


def iter_event_columns(
    path: str | Path, columns: tuple[str, ...], chunk_events: int
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(first row, {column: array}) of ``chunk_events`` rows at a time, for files larger than
    memory; a chunk that cannot be read (a truncated file) raises DataFormatError naming it."""
    path = Path(path)
    unknown = [c for c in columns if c not in ARRAYS]
    if unknown or chunk_events < 1:
        raise ValueError(f"columns must be among {sorted(ARRAYS)} and chunk_events >= 1")
    with _open_checked(path) as f:
        n = len(f["event"])
        for name in columns:
            dtype, shape = ARRAYS[name]
            if f[name].dtype != dtype or f[name].shape != (n, *shape):
                raise DataFormatError(f"{path}: {name} is not {np.dtype(dtype)} {(n, *shape)}")
        for start in range(0, n, chunk_events):
            stop = min(n, start + chunk_events)
            try:
                chunk = {name: f[name][start:stop] for name in columns}
            except (OSError, ValueError) as exc:
                raise DataFormatError(
                    f"{path}: rows {start}..{stop - 1} unreadable (truncated or corrupt): {exc}"
                ) from exc
            yield start, chunk


def event_file_processes(path: str | Path) -> tuple[str, ...]:
    """The process names that ``label`` indexes in an event file."""
    path = Path(path)
    with _open_checked(path) as f:
        return tuple(json.loads(f.attrs["processes"]))
