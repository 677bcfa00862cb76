"""Accepted events on disk: one ROOT file per lumisection (uproot), checksummed in a manifest.

Events of a lumisection are held in memory until ``end_lumisection`` writes its file
``run{run:06d}_ls{ls:05d}.root`` (TTree ``Events``) under a temporary name, fsyncs it, renames
it into place and records its SHA-256 in ``run{run:06d}_files.json``. If the disk is full or
unwritable a ``StorageError`` is raised and no event is dropped: everything not in a finished
file stays in ``pending()`` so the daemon can stop cleanly (or retry after freeing space).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.errors import DataFormatError, L1ForgeError
from l1forge.fileio import probe_writable, sha256_file, write_atomic
from l1forge.sim.l1objects import N_FEATURES, N_OBJECTS, to_physical

log = logging.getLogger(__name__)

TREE = "Events"
MANIFEST_FORMAT = "l1forge-run-files"
MANIFEST_VERSION = 1
DEFAULT_MIN_FREE_MB = 64.0
DEFAULT_BASKET_EVENTS = 10_000


class StorageError(L1ForgeError, OSError):
    """The output disk is full or unwritable: the daemon must stop taking data."""


class DiskFullError(StorageError):
    """No room for the next file: below ``storage.min_free_mb`` or the write hit ENOSPC. The
    accepted events stay pending, so the same call can be retried once space is back."""


@dataclass(frozen=True)
class FileRecord:
    """One finished lumisection file."""

    path: str  # file name, relative to the run's output folder
    lumisection: int
    n_events: int
    sha256: str
    bytes: int


@dataclass(frozen=True)
class EventRecords:
    """Accepted events as columns (what ``pending()`` returns)."""

    lumisection: np.ndarray  # uint64 (N,)
    run: np.ndarray  # uint64 (N,)
    seq: np.ndarray  # uint64 (N,)
    event: np.ndarray  # uint64 (N,)
    objects_hw: np.ndarray  # int32 (N, 19, 3)
    scores: np.ndarray  # float64 (N, M)
    seed_bits: np.ndarray  # uint32 (N,)

    def __len__(self) -> int:
        return len(self.seq)


def file_name(run: int, lumisection: int) -> str:
    return f"run{run:06d}_ls{lumisection:05d}.root"


def manifest_name(run: int) -> str:
    return f"run{run:06d}_files.json"


def _remove(path: Path) -> None:
    """Best-effort removal of a partial file while a storage error is being reported."""
    with contextlib.suppress(OSError):
        path.unlink()


def _concat(parts: list[EventRecords], n_models: int) -> EventRecords:
    if not parts:
        return EventRecords(
            lumisection=np.zeros(0, np.uint64),
            run=np.zeros(0, np.uint64),
            seq=np.zeros(0, np.uint64),
            event=np.zeros(0, np.uint64),
            objects_hw=np.zeros((0, N_OBJECTS, N_FEATURES), np.int32),
            scores=np.zeros((0, n_models), np.float64),
            seed_bits=np.zeros(0, np.uint32),
        )
    return EventRecords(
        *(np.concatenate([getattr(p, k) for p in parts]) for k in EventRecords.__dataclass_fields__)
    )


class AcceptedWriter:
    """Collects accepted events per lumisection and writes each lumisection's ROOT file."""

    def __init__(
        self,
        out_dir: str | Path,
        run: int,
        seed_names: Sequence[str],
        *,
        model_names: Sequence[str] = (),
        basket_events: int = DEFAULT_BASKET_EVENTS,
        min_free_mb: float = DEFAULT_MIN_FREE_MB,
    ):
        if basket_events < 1:
            raise DataFormatError(f"basket_events must be >= 1, got {basket_events}")
        self.out_dir = Path(out_dir)
        self.run = int(run)
        self.seed_names = tuple(seed_names)
        self.model_names = tuple(model_names)
        self.basket_events = basket_events
        self.min_free_mb = float(min_free_mb)
        self._pending: dict[int, list[EventRecords]] = {}
        self._records: list[FileRecord] = []
        self._closed = False
        try:
            probe_writable(self.out_dir)
        except OSError as exc:
            raise StorageError(
                f"output folder {self.out_dir} is not writable ({exc.strerror or exc}): "
                "choose another storage.out_dir or fix its permissions"
            ) from exc
        self._write_manifest(complete=False)

    @property
    def records(self) -> tuple[FileRecord, ...]:
        return tuple(self._records)

    def write(
        self,
        lumisection: int | np.ndarray,
        run: int,
        seqs: np.ndarray,
        event: np.ndarray,
        objects_hw: np.ndarray,
        scores: np.ndarray,
        seed_bits: np.ndarray,
    ) -> None:
        """Hold accepted events until their lumisection ends (``lumisection`` int or per event)."""
        if self._closed:
            raise StorageError("the writer is closed")
        if int(run) != self.run:
            raise DataFormatError(f"events of run {run} given to the writer of run {self.run}")
        seqs = np.asarray(seqs, dtype=np.uint64)
        n = len(seqs)
        ls = np.broadcast_to(np.asarray(lumisection, dtype=np.uint64), (n,))
        scores = np.asarray(scores, dtype=np.float64).reshape(n, -1)
        rec = EventRecords(
            lumisection=np.array(ls),
            run=np.full(n, self.run, dtype=np.uint64),
            seq=seqs.copy(),
            event=np.asarray(event, dtype=np.uint64).copy(),
            objects_hw=np.asarray(objects_hw, dtype=np.int32).copy(),
            scores=scores.copy(),
            seed_bits=np.asarray(seed_bits, dtype=np.uint32).copy(),
        )
        self._check(rec)
        for value in np.unique(rec.lumisection):
            sel = rec.lumisection == value
            part = rec if sel.all() else EventRecords(*(getattr(rec, k)[sel] for k in _FIELDS))
            self._pending.setdefault(int(value), []).append(part)

    def _check(self, rec: EventRecords) -> None:
        n = len(rec)
        m = len(self.model_names)
        if rec.event.shape != (n,) or rec.seed_bits.shape != (n,):
            raise DataFormatError("write: event and seed_bits must have one value per event")
        if rec.objects_hw.shape != (n, N_OBJECTS, N_FEATURES):
            raise DataFormatError(f"write: objects_hw must be ({n}, 19, 3)")
        if m and rec.scores.shape != (n, m):
            raise DataFormatError(f"write: scores must be ({n}, {m}) for models {self.model_names}")
        if self.model_names == () and self._pending:
            first = next(iter(self._pending.values()))[0]
            if first.scores.shape[1] != rec.scores.shape[1]:
                raise DataFormatError("write: the number of score columns changed")

    def pending(self) -> EventRecords:
        """Every event not yet in a finished file, in the order written (per lumisection)."""
        return _concat([p for ls in sorted(self._pending) for p in self._pending[ls]], self._n_m())

    def pending_count(self) -> int:
        return sum(len(p) for parts in self._pending.values() for p in parts)

    def open_lumisections(self) -> tuple[int, ...]:
        return tuple(sorted(self._pending))

    def _n_m(self) -> int:
        if self.model_names:
            return len(self.model_names)
        for parts in self._pending.values():
            return parts[0].scores.shape[1]
        return 0

    def _score_names(self, m: int) -> list[str]:
        return (
            [f"score_{n}" for n in self.model_names]
            if self.model_names
            else [f"score_{j}" for j in range(m)]
        )

    def _check_free_space(self) -> None:
        free_mb = shutil.disk_usage(self.out_dir).free / 2**20
        if free_mb < self.min_free_mb:
            raise DiskFullError(
                f"{self.out_dir} has {free_mb:.1f} MB free, below storage.min_free_mb = "
                f"{self.min_free_mb}: free disk space or point storage.out_dir elsewhere"
            )

    def end_lumisection(self, ls: int) -> FileRecord:
        """Write, fsync and checksum the file of lumisection ``ls`` (an empty file if no events)."""
        ls = int(ls)
        rec = _concat(self._pending.get(ls, []), self._n_m())
        name = file_name(self.run, ls)
        final, tmp = self.out_dir / name, self.out_dir / (name + ".part")
        self._check_free_space()
        try:
            self._write_root(tmp, rec)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            _remove(tmp)
            full = exc.errno == errno.ENOSPC
            why = "the disk is full" if full else (exc.strerror or str(exc))
            raise (DiskFullError if full else StorageError)(
                f"cannot write {final} ({why}); {self.pending_count()} accepted events are "
                "kept in memory: stop the run, free space, then end the lumisection again"
            ) from exc
        record = FileRecord(name, ls, len(rec), sha256_file(final), final.stat().st_size)
        previous = self._records
        self._records = [r for r in self._records if r.lumisection != ls] + [record]
        try:
            self._write_manifest(complete=False)
        except StorageError:  # a file the manifest does not list would not count: undo it
            self._records = previous
            _remove(final)
            raise
        self._pending.pop(ls, None)
        log.info("lumisection %d: %d accepted events in %s", ls, len(rec), name)
        return record

    def _write_root(self, path: Path, rec: EventRecords) -> None:
        import uproot

        m = rec.scores.shape[1]
        names = self._score_names(m)
        branches: dict[str, Any] = {
            "run": np.uint64,
            "seq": np.uint64,
            "event": np.uint64,
            "lumisection": np.uint64,
            "seed_bits": np.uint32,
            **{n: np.float64 for n in names},
            "objects_hw": np.dtype((np.int32, (N_OBJECTS, N_FEATURES))),
            "objects_phys": np.dtype((np.float32, (N_OBJECTS, N_FEATURES))),
        }
        with uproot.recreate(path) as f:
            f.mktree(TREE, branches, title="l1forge accepted events")
            for s in range(0, len(rec), self.basket_events):
                sl = slice(s, s + self.basket_events)
                obj = rec.objects_hw[sl]
                f[TREE].extend(
                    {
                        "run": rec.run[sl],
                        "seq": rec.seq[sl],
                        "event": rec.event[sl],
                        "lumisection": rec.lumisection[sl],
                        "seed_bits": rec.seed_bits[sl],
                        **{n: rec.scores[sl, j] for j, n in enumerate(names)},
                        "objects_hw": obj,
                        "objects_phys": to_physical(obj),
                    }
                )

    def _write_manifest(self, complete: bool) -> None:
        doc = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "run": self.run,
            "complete": complete,
            "seed_names": list(self.seed_names),
            "model_names": list(self.model_names),
            "files": [asdict(r) for r in sorted(self._records, key=lambda r: r.lumisection)],
        }
        path = self.out_dir / manifest_name(self.run)
        tmp = path.with_name(path.name + ".part")
        try:
            write_atomic(path, json.dumps(doc, indent=1) + "\n", tmp=tmp)
        except OSError as exc:
            raise StorageError(f"cannot write the manifest {path}: {exc.strerror or exc}") from exc

    def close(self) -> list[FileRecord]:
        """End every open lumisection and mark the manifest complete; returns all file records."""
        for ls in self.open_lumisections():
            self.end_lumisection(ls)
        self._write_manifest(complete=True)
        self._closed = True
        return sorted(self._records, key=lambda r: r.lumisection)


_FIELDS = tuple(EventRecords.__dataclass_fields__)


@dataclass(frozen=True)
class RunFilesSummary:
    """What ``verify_run_files`` found; ``ok`` when nothing is wrong."""

    run: int
    n_files: int
    n_events: int
    complete_manifest: bool
    bad_checksums: tuple[str, ...]
    missing_files: tuple[str, ...]
    unlisted_files: tuple[str, ...]
    wrong_counts: tuple[str, ...]
    duplicates: int
    missing_events: int  # expected (run, seq) not found
    unexpected_events: int  # found but not expected
    seed_counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return not (
            self.bad_checksums
            or self.missing_files
            or self.unlisted_files
            or self.wrong_counts
            or self.duplicates
            or self.missing_events
            or self.unexpected_events
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def verify_run_files(
    out_dir: str | Path, run: int, expected_seqs: Iterable[int] | np.ndarray | None = None
) -> RunFilesSummary:
    """Re-read every file of ``run``: checksums, event counts, (run, seq) uniqueness and, when
    ``expected_seqs`` is given, that exactly those sequence numbers were stored."""
    import uproot

    out = Path(out_dir)
    mpath = out / manifest_name(run)
    try:
        doc = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"cannot read the run manifest {mpath}: {exc}") from exc
    if doc.get("format") != MANIFEST_FORMAT or doc.get("run") != run:
        raise DataFormatError(f"{mpath} is not the file manifest of run {run}")
    seed_names = doc.get("seed_names", [])
    listed = {f["path"] for f in doc["files"]}
    on_disk = {p.name for p in out.glob(f"run{run:06d}_ls*.root")}
    bad, missing, wrong = [], [], []
    seqs, bits = [], []
    for f in doc["files"]:
        path = out / f["path"]
        if not path.is_file():
            missing.append(f["path"])
            continue
        if sha256_file(path) != f["sha256"]:
            bad.append(f["path"])
            continue
        with uproot.open(path) as rf:
            t = rf[TREE]
            cols = t.arrays(["run", "seq", "seed_bits"], library="np")
        if len(cols["seq"]) != f["n_events"] or (cols["run"] != run).any():
            wrong.append(f["path"])
        seqs.append(cols["seq"].astype(np.uint64))
        bits.append(cols["seed_bits"].astype(np.uint32))
    all_seqs = np.concatenate(seqs) if seqs else np.zeros(0, np.uint64)
    all_bits = np.concatenate(bits) if bits else np.zeros(0, np.uint32)
    uniq = np.unique(all_seqs)
    missing_ev = unexpected = 0
    if expected_seqs is not None:
        exp = np.unique(np.fromiter(expected_seqs, dtype=np.uint64))
        missing_ev = len(np.setdiff1d(exp, uniq, assume_unique=True))
        unexpected = len(np.setdiff1d(uniq, exp, assume_unique=True))
    from l1forge.online.datapath.menu import seed_counts

    counts = seed_counts(all_bits, len(seed_names)).tolist()
    return RunFilesSummary(
        run=run,
        n_files=len(doc["files"]),
        n_events=len(all_seqs),
        complete_manifest=bool(doc.get("complete")),
        bad_checksums=tuple(bad),
        missing_files=tuple(missing),
        unlisted_files=tuple(sorted(on_disk - listed)),
        wrong_counts=tuple(wrong),
        duplicates=len(all_seqs) - len(uniq),
        missing_events=missing_ev,
        unexpected_events=unexpected,
        seed_counts=dict(zip(seed_names, counts, strict=True)),
    )
