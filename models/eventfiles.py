"""Event files as network inputs, read in chunks: l1forge HDF5 or ROOT files with its columns.

An HDF5 event file (``l1forge.sim.dataset``) or a ROOT file whose TTree ``Events`` has the
branches ``run``, ``event`` and ``objects_hw`` (19 x 3 integers per event, as the daemon's
storage writes them; ``label`` optional) is read ``chunk_events`` rows at a time, so memory
stays bounded for files larger than memory. The network inputs are ``objects_hw`` flattened to
57 integers per event, exactly what the daemon's workers feed their backends.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l1forge.errors import DataFormatError
from l1forge.sim.l1objects import N_FEATURES, N_OBJECTS

N_INPUTS = N_OBJECTS * N_FEATURES
ROOT_TREE = "Events"
ROOT_SUFFIXES = (".root",)
HDF5_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class EventChunk:
    """Consecutive events of a file: rows ``start .. start + len - 1``."""

    start: int
    run: np.ndarray  # uint64 (n,)
    event: np.ndarray  # uint64 (n,)
    inputs: np.ndarray  # int32 (n, 57)
    label: np.ndarray  # int16 (n,), indexes EventFile.processes

    def __len__(self) -> int:
        return len(self.run)


@dataclass(frozen=True)
class EventFile:
    """An event file checked at open: its kind, length and process names."""

    path: Path
    kind: str  # "hdf5" or "root"
    n_events: int
    processes: tuple[str, ...]
    branches: tuple[str, ...] = ()  # of a ROOT file's TTree

    def chunks(self, chunk_events: int) -> Iterator[EventChunk]:
        """The file's events, ``chunk_events`` at a time."""
        if self.kind == "hdf5":
            yield from _hdf5_chunks(self, chunk_events)
        else:
            yield from _root_chunks(self, chunk_events)


def open_event_file(path: str | Path) -> EventFile:
    """Check an event file (missing, truncated, wrong columns each raise DataFormatError)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"event file not found: {path}")
    if path.suffix.lower() in ROOT_SUFFIXES:
        return _open_root(path)
    from l1forge.sim.dataset import event_file_length, event_file_processes

    n = event_file_length(path)
    return EventFile(path, "hdf5", n, event_file_processes(path))


def _hdf5_chunks(ef: EventFile, chunk_events: int) -> Iterator[EventChunk]:
    from l1forge.sim.dataset import iter_event_columns

    columns = ("run", "event", "objects_hw", "label")
    for start, c in iter_event_columns(ef.path, columns, chunk_events):
        n = len(c["run"])
        yield EventChunk(
            start, c["run"], c["event"], c["objects_hw"].reshape(n, N_INPUTS), c["label"]
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _open_root(path: Path) -> EventFile:
    import uproot
    from uproot.deserialization import DeserializationError

    try:
        with uproot.open(path) as f:
            if ROOT_TREE not in f:
                raise DataFormatError(f"{path}: no TTree {ROOT_TREE!r} (not an l1forge file?)")
            tree = f[ROOT_TREE]
            branches = tuple(tree.keys())
            n = int(tree.num_entries)
    except DataFormatError:
        raise
    except (OSError, ValueError, KeyError, zlib.error, DeserializationError) as exc:
        raise DataFormatError(
            f"{path}: unreadable ROOT file (truncated or corrupt): {_one_line(exc)}"
        ) from exc
    missing = [b for b in ("run", "event", "objects_hw") if b not in branches]
    if missing:
        raise DataFormatError(f"{path}: TTree {ROOT_TREE!r} has no branches {missing}")
    return EventFile(path, "root", n, (path.stem,), branches)


def _root_chunks(ef: EventFile, chunk_events: int) -> Iterator[EventChunk]:
    import uproot
    from uproot.deserialization import DeserializationError

    names = ["run", "event", "objects_hw"] + (["label"] if "label" in ef.branches else [])
    with uproot.open(ef.path) as f:
        tree = f[ROOT_TREE]
        for start in range(0, ef.n_events, chunk_events):
            stop = min(ef.n_events, start + chunk_events)
            try:
                c = tree.arrays(names, entry_start=start, entry_stop=stop, library="np")
            except (OSError, ValueError, KeyError, zlib.error, DeserializationError) as exc:
                raise DataFormatError(
                    f"{ef.path}: entries {start}..{stop - 1} unreadable (truncated or corrupt): "
                    f"{_one_line(exc)}"
                ) from exc
            obj = np.asarray(c["objects_hw"])
            n = stop - start
            if obj.dtype == object or obj.size != n * N_INPUTS:
                raise DataFormatError(
                    f"{ef.path}: objects_hw must hold {N_OBJECTS} x {N_FEATURES} = {N_INPUTS} "
                    f"integers per event, got shape {obj.shape}"
                )
            if not np.issubdtype(obj.dtype, np.integer):
                raise DataFormatError(f"{ef.path}: objects_hw must be integers, got {obj.dtype}")
            label = c["label"].astype(np.int16) if "label" in c else np.zeros(n, dtype=np.int16)
            yield EventChunk(
                start,
                c["run"].astype(np.uint64),
                c["event"].astype(np.uint64),
                obj.reshape(n, N_INPUTS).astype(np.int32, copy=False),
                label,
            )
