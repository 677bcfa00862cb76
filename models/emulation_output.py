"""The emulator's output files: ROOT (TTree ``Events``) or HDF5 with the same flat columns.

Columns are appended chunk by chunk under a ``.partial`` name renamed into place on success;
metadata (the events file, every model's IR path and sha256, the menu) is JSON in a
``l1forge_meta`` TObjString (ROOT) or attribute (HDF5). ``open_output`` checks a stored file
and reads it back in row ranges.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.errors import ConfigError, DataFormatError, L1ForgeError
from l1forge.models.eventfiles import HDF5_SUFFIXES, ROOT_SUFFIXES, ROOT_TREE

OUTPUT_FORMAT = "l1forge-emulation"
OUTPUT_VERSION = 1
META_KEY = "l1forge_meta"  # a TObjString in ROOT, an attribute in HDF5


def output_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in ROOT_SUFFIXES:
        return "root"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    raise ConfigError(f"{path}: output must end in .root (a TTree) or .h5/.hdf5")


class OutputWriter:
    """Columns appended chunk by chunk to a ROOT or HDF5 file, renamed into place on close."""

    def __init__(self, path: str | Path, dtypes: Mapping[str, np.dtype], meta: dict[str, Any]):
        self.path = Path(path)
        self.kind = output_kind(self.path)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.kind == "root":
                import uproot

                self._file = uproot.recreate(self._tmp)
                self._file[META_KEY] = json.dumps(meta)
                self._file.mktree(ROOT_TREE, dict(dtypes), title="l1forge emulator output")
            else:
                import h5py

                self._file = h5py.File(self._tmp, "w")
                self._file.attrs["format"] = OUTPUT_FORMAT
                self._file.attrs["version"] = OUTPUT_VERSION
                self._file.attrs[META_KEY] = json.dumps(meta)
                for name, dt in dtypes.items():
                    self._file.create_dataset(
                        name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(65_536,)
                    )
        except OSError as exc:
            raise L1ForgeError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self.n_events = 0

    def extend(self, cols: Mapping[str, np.ndarray]) -> None:
        n = len(cols["run"])
        try:
            if self.kind == "root":
                self._file[ROOT_TREE].extend(dict(cols))
            else:
                for name, a in cols.items():
                    ds = self._file[name]
                    ds.resize((self.n_events + n,))
                    ds[self.n_events :] = a
        except OSError as exc:
            raise L1ForgeError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self.n_events += n

    def close(self) -> None:
        self._file.close()
        self._tmp.replace(self.path)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class OutputFile:
    """A stored emulator output (ROOT or HDF5), read in row ranges."""

    path: Path
    kind: str
    n_events: int
    columns: tuple[str, ...]
    meta: dict[str, Any]

    def read(self, names: Sequence[str], start: int, stop: int) -> dict[str, np.ndarray]:
        try:
            if self.kind == "root":
                import uproot

                with uproot.open(self.path) as f:
                    got = f[ROOT_TREE].arrays(
                        list(names), entry_start=start, entry_stop=stop, library="np"
                    )
                return {k: np.asarray(got[k]) for k in names}
            import h5py

            with h5py.File(self.path, "r") as f:
                return {k: f[k][start:stop] for k in names}
        except (OSError, ValueError, KeyError) as exc:
            raise DataFormatError(
                f"{self.path}: rows {start}..{stop - 1} unreadable: {exc}"
            ) from exc


def open_output(path: str | Path) -> OutputFile:
    """Check a stored emulator output file and read its columns' names and metadata."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"emulator output not found: {path}")
    kind = output_kind(path)
    try:
        if kind == "root":
            import uproot

            with uproot.open(path) as f:
                meta = json.loads(str(f[META_KEY]))
                tree = f[ROOT_TREE]
                cols, n = tuple(tree.keys()), int(tree.num_entries)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != OUTPUT_FORMAT:
                    raise DataFormatError(f"{path}: not an {OUTPUT_FORMAT} file")
                meta = json.loads(f.attrs[META_KEY])
                cols, n = tuple(f.keys()), len(f["run"])
    except DataFormatError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataFormatError(f"{path}: not a readable l1forge emulator output ({exc})") from exc
    if meta.get("format") != OUTPUT_FORMAT or meta.get("version") != OUTPUT_VERSION:
        raise DataFormatError(f"{path}: not an {OUTPUT_FORMAT} v{OUTPUT_VERSION} file")
    return OutputFile(path, kind, n, cols, meta)
