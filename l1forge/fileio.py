"""File operations every part shares: atomic replacement, SHA-256 of a file, a writability probe.

Each raises ``OSError`` with the system's reason; callers wrap it in their own error type with a
message naming their setting (``storage.out_dir``, ``state_dir``, an event file).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

_BLOCK = 1 << 20


def write_atomic(path: str | Path, data: str | bytes, *, tmp: str | Path | None = None) -> None:
    """Replace ``path`` by ``data`` so a reader sees the old or the new file, never a partial one.

    The data goes to a temporary file in the same folder (``tmp``, or a fresh unique name), is
    fsynced, then renamed over ``path``; the temporary file is removed if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    else:
        name = str(tmp)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def probe_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove a file can be created and removed in it."""
    p = Path(folder)
    p.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=p, prefix=".l1forge-write-test-"):
        pass
    return p
