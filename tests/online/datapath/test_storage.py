"""Accepted-event storage: ROOT files per lumisection, checksums, verification, full disks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import uproot
from numpy.testing import assert_array_equal

from l1forge.errors import DataFormatError, L1ForgeError
from l1forge.online.datapath.storage import (
    AcceptedWriter,
    StorageError,
    file_name,
    manifest_name,
    verify_run_files,
)
from l1forge.sim.dataset import read_events
from l1forge.sim.l1objects import to_physical

from .runs import BATCH, assert_run_matches_emulator, wait_for

RUN = 42
SEEDS = ("AD_Loose", "AD_Tight", "ZeroBias")
MODELS = ("ad", "classifier")


def accepted(n: int, first_seq: int = 0, seed: int = 0, objects: np.ndarray | None = None):
    """Columns of ``n`` accepted events: random scores and seed bits, objects given or random."""
    rng = np.random.default_rng(seed)
    if objects is None:
        objects = np.stack(
            [
                rng.integers(0, 4096, (n, 19)),
                rng.integers(-128, 128, (n, 19)),
                rng.integers(-72, 72, (n, 19)),
            ],
            axis=-1,
        ).astype(np.int32)
    return {
        "seqs": np.arange(first_seq, first_seq + n, dtype=np.uint64),
        "event": rng.integers(0, 2**40, n).astype(np.uint64),
        "objects_hw": objects,
        "scores": rng.normal(size=(n, len(MODELS))),
        "seed_bits": rng.integers(1, 8, n).astype(np.uint32),
    }


def writer(out: Path, **kw) -> AcceptedWriter:
    return AcceptedWriter(out, RUN, SEEDS, model_names=MODELS, **kw)


def test_files_per_lumisection_hold_every_branch_exactly(tmp_path, events_h5):
    ev = read_events(events_h5)
    objects = ev.objects_hw[:900]
    cols = accepted(900, first_seq=4800, objects=objects)
    ls = (cols["seqs"] // np.uint64(300)).astype(np.uint64)  # 3 lumisections of 300 events
    w = writer(tmp_path, basket_events=128)
    # out of order and in pieces, as results arrive from several workers
    for part in (slice(600, 900), slice(0, 250), slice(250, 600)):
        w.write(ls[part], RUN, *(cols[k][part] for k in cols))
    assert w.pending_count() == 900 and w.open_lumisections() == (16, 17, 18)
    rec = w.end_lumisection(17)
    assert rec.path == file_name(RUN, 17) == "run000042_ls00017.root" and rec.n_events == 300
    records = w.close()
    assert [r.lumisection for r in records] == [16, 17, 18] and w.pending_count() == 0

    for r in records:
        with uproot.open(tmp_path / r.path) as f:
            t = f["Events"]
            assert set(t.keys()) == {
                "run",
                "seq",
                "event",
                "lumisection",
                "seed_bits",
                "score_ad",
                "score_classifier",
                "objects_hw",
                "objects_phys",
            }
            got = t.arrays(library="np")
        sel = ls == r.lumisection
        assert_array_equal(got["seq"], cols["seqs"][sel])
        assert_array_equal(got["run"], np.full(sel.sum(), RUN, np.uint64))
        assert_array_equal(got["lumisection"], ls[sel])
        assert_array_equal(got["event"], cols["event"][sel])
        assert_array_equal(got["seed_bits"], cols["seed_bits"][sel])
        assert_array_equal(got["score_ad"], cols["scores"][sel, 0])
        assert_array_equal(got["score_classifier"], cols["scores"][sel, 1])
        assert_array_equal(got["objects_hw"], objects[sel])
        assert_array_equal(got["objects_phys"], to_physical(objects[sel]))
        assert got["objects_hw"].dtype == np.int32 and got["objects_phys"].dtype == np.float32

    manifest = json.loads((tmp_path / manifest_name(RUN)).read_text())
    assert manifest["complete"] and manifest["run"] == RUN
    assert [f["path"] for f in manifest["files"]] == [r.path for r in records]
    summary = verify_run_files(tmp_path, RUN, expected_seqs=cols["seqs"])
    assert summary.ok and summary.n_events == 900 and summary.n_files == 3
    bits = cols["seed_bits"]
    assert summary.seed_counts == {s: int(((bits >> i) & 1).sum()) for i, s in enumerate(SEEDS)}
    assert json.loads(json.dumps(summary.to_json()))["ok"] is True


def test_verify_finds_every_defect(tmp_path):
    cols = accepted(200, first_seq=100)
    w = writer(tmp_path)
    w.write(0, RUN, **{k: v[:100] for k, v in cols.items()})
    w.write(1, RUN, **{k: v[100:] for k, v in cols.items()})
    w.write(1, RUN, **{k: v[150:160] for k, v in cols.items()})  # a duplicated delivery
    w.end_lumisection(0)
    partial = verify_run_files(tmp_path, RUN)
    assert partial.ok and not partial.complete_manifest and partial.n_events == 100
    w.close()

    s = verify_run_files(tmp_path, RUN, expected_seqs=range(100, 300))
    assert s.duplicates == 10 and not s.ok
    assert s.missing_events == 0 and s.unexpected_events == 0
    s = verify_run_files(tmp_path, RUN, expected_seqs=range(90, 290))
    assert (s.missing_events, s.unexpected_events) == (10, 10)

    f0 = tmp_path / file_name(RUN, 0)
    data = bytearray(f0.read_bytes())
    data[len(data) // 2] ^= 0x10
    f0.write_bytes(bytes(data))
    (tmp_path / file_name(RUN, 7)).write_bytes(b"stray")
    os.remove(tmp_path / file_name(RUN, 1))
    s = verify_run_files(tmp_path, RUN)
    assert s.bad_checksums == (file_name(RUN, 0),)
    assert s.missing_files == (file_name(RUN, 1),)
    assert s.unlisted_files == (file_name(RUN, 7),)
    assert not s.ok
    with pytest.raises(DataFormatError, match="manifest"):
        verify_run_files(tmp_path, RUN + 1)


def test_empty_lumisection_gives_an_empty_file(tmp_path):
    w = writer(tmp_path)
    rec = w.end_lumisection(3)
    assert rec.n_events == 0
    with uproot.open(tmp_path / rec.path) as f:
        assert f["Events"].num_entries == 0
    w.close()
    assert verify_run_files(tmp_path, RUN, expected_seqs=[]).ok


def test_bad_input_is_refused_before_it_is_held(tmp_path):
    w = writer(tmp_path)
    cols = accepted(5)
    with pytest.raises(DataFormatError, match="run 7"):
        w.write(0, 7, **cols)
    with pytest.raises(DataFormatError, match="scores"):
        w.write(0, RUN, **{**cols, "scores": np.zeros((5, 3))})
    with pytest.raises(DataFormatError, match="objects_hw"):
        w.write(0, RUN, **{**cols, "objects_hw": np.zeros((5, 18, 3), np.int32)})
    assert w.pending_count() == 0
    w.close()
    with pytest.raises(StorageError, match="closed"):
        w.write(0, RUN, **cols)


def test_unwritable_folder_is_a_storage_error(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(StorageError, match="not writable") as info:
        writer(tmp_path / "a_file" / "out")
    assert isinstance(info.value, OSError) and isinstance(info.value, L1ForgeError)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str, *options: str):
    """A real size-limited filesystem (needs root); skips the test when mounting is impossible."""
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
            check=True,
            timeout=30,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {exc}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True, timeout=30)


def test_read_only_filesystem_is_a_storage_error(tmp_path):
    with small_tmpfs(tmp_path / "ro", "1m", "ro") as mnt:
        with pytest.raises(StorageError, match="not writable"):
            writer(mnt / "run")


def test_full_disk_keeps_every_accepted_event(tmp_path):
    """A 1 MB filesystem fills up while writing: StorageError, no event dropped, no partial
    file; after the disk grows the same lumisection is written and verifies complete."""
    cols = accepted(8000, seed=3)
    with small_tmpfs(tmp_path / "small", "1m") as mnt:
        w = writer(mnt, min_free_mb=0.0)
        w.write(0, RUN, **{k: v[:20] for k, v in cols.items()})
        w.end_lumisection(0)  # a small file fits
        w.write(1, RUN, **{k: v[20:] for k, v in cols.items()})
        with pytest.raises(StorageError, match="disk is full") as info:
            w.end_lumisection(1)
        assert isinstance(info.value, OSError)
        held = w.pending()
        assert len(held) == 7980 and w.open_lumisections() == (1,)
        assert_array_equal(held.seq, cols["seqs"][20:])
        assert_array_equal(held.objects_hw, cols["objects_hw"][20:])
        assert_array_equal(held.scores, cols["scores"][20:])
        assert {p.name for p in mnt.iterdir()} == {file_name(RUN, 0), manifest_name(RUN)}

        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True, timeout=30)
        w.end_lumisection(1)
        w.close()
        summary = verify_run_files(mnt, RUN, expected_seqs=cols["seqs"])
        assert summary.ok and summary.n_events == 8000


def test_min_free_space_is_checked_before_each_file(tmp_path):
    cols = accepted(50)
    w = writer(tmp_path, min_free_mb=1e12)  # more than any disk has
    w.write(2, RUN, **cols)
    with pytest.raises(StorageError, match="min_free_mb"):
        w.end_lumisection(2)
    assert w.pending_count() == 50
    assert not (tmp_path / file_name(RUN, 2)).exists()
    w.min_free_mb = 0.0
    w.close()
    assert verify_run_files(tmp_path, RUN, expected_seqs=cols["seqs"]).ok


def test_a_failed_manifest_update_keeps_the_events_pending(tmp_path):
    """The file counts only once the manifest lists it: if that write fails, nothing is lost."""
    cols = accepted(30)
    w = writer(tmp_path)
    w.write(0, RUN, **cols)
    blocker = tmp_path / (manifest_name(RUN) + ".part")
    blocker.mkdir()  # the manifest's temporary file cannot be created
    with pytest.raises(StorageError, match="manifest"):
        w.end_lumisection(0)
    assert w.pending_count() == 30 and w.records == ()
    assert not (tmp_path / file_name(RUN, 0)).exists()
    blocker.rmdir()
    w.close()
    assert verify_run_files(tmp_path, RUN, expected_seqs=cols["seqs"]).ok


def _fill(mnt: Path, leave_mb: float) -> Path:
    """A file that takes all but ``leave_mb`` of the filesystem's free space."""
    filler = mnt / "filler.bin"
    free = shutil.disk_usage(mnt).free
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, int(free - leave_mb * 2**20)))
    return filler


def test_a_full_disk_holds_the_run_until_space_returns(
    tmp_path, events_h5, models, run_cfg, running_pipeline
):
    """storage.full_wait_s: the run waits (the source blocks, nothing is acknowledged) while the
    disk is full, and goes on when space is freed: every event stored once, read back."""
    n = 6000
    cfg = run_cfg(
        source={"n_events": n, "rate_hz": 3000.0},
        storage={"min_free_mb": 2, "full_wait_s": 120.0},
    )
    with small_tmpfs(tmp_path / "small", "24m") as mnt:
        filler = _fill(mnt, leave_mb=1)
        pipe = running_pipeline(cfg, 21, mnt / "run21")
        waiting = wait_for(lambda: pipe.status()["storage_waiting_s"] > 1.0, what="a wait")
        held = pipe.status()
        time.sleep(1.0)
        still = pipe.status()
        assert waiting and held["storage_full_waits"] == still["storage_full_waits"] == 1
        assert still["events_in"] - held["events_in"] <= 2 * BATCH  # blocked: at most in transit
        assert still["state"] == "running" and still["storage_error"] is None
        filler.unlink()
        assert pipe.wait_source_done(120)
        summary = pipe.stop()
        assert summary.error is None
        assert_run_matches_emulator(summary, pipe, events_h5, models, n)
