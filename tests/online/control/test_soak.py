"""`benchmarks/soak.py --short`: the daemon in a subprocess for 90 s at full rate while workers
are killed and frozen, network + menu are swapped and the disk fills once; the soak's own
reading of the ROOT files (uproot) must find every accepted (run, seq) once with the score of
the pair that was in force. The hour-long run is the same script without ``--short``."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from l1forge.models import qnet

from ..datapath.runs import scaled_ad

SOAK = Path(__file__).resolve().parents[3] / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak_result(tmp_path_factory, events_h5) -> dict:
    tmp = tmp_path_factory.mktemp("soak")
    ir = qnet.save(scaled_ad(seed=5, name="soak_ad"), tmp / "soak_ad.json")
    out = tmp / "soak.json"
    cmd = [sys.executable, str(SOAK), "--short", "--network", str(ir)]
    cmd += ["--events", str(events_h5), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert out.exists(), proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert proc.returncode == 0, (json.dumps(result)[:3000], proc.stderr[-3000:])
    return result


def test_soak_loses_duplicates_and_corrupts_nothing(soak_result):
    r = soak_result
    assert r["runs"] >= 2 and r["events"] > 100_000
    assert r["verified_lost"] == r["verified_duplicated"] == r["verified_mismatched"] == 0
    assert r["manifests_ok"]
    assert r["verified_stored"] == sum(run["stored"] for run in r["per_run"]) > 0
    # most events are attributed to a pair: the switch-over gaps are short
    assert r["verified_unattributed"] <= 0.01 * r["verified_stored"]


def test_soak_faults_happened_and_the_daemon_saw_them(soak_result):
    r = soak_result
    assert r["worker_kills"] >= 3 and r["freezes"] >= 1 and r["swaps"] >= 5
    assert all(f["declared_dead"] for f in r["faults"]["freezes"])
    assert r["disk_full_events"] == 1 and r["faults"]["fills"][0]["daemon_waited_s"] > 0
    # both pairs produced stored events: the swaps took effect in the data
    by_pair = [run["stored_by_pair"] for run in r["per_run"]]
    assert sum(p["A"] for p in by_pair) > 0 and sum(p["B"] for p in by_pair) > 0
    assert sum(run["dead_workers"] for run in r["per_run"]) >= r["worker_kills"]


def test_soak_tap_and_memory(soak_result):
    r = soak_result
    assert r["tap_published"] > 0 and r["tap_drops"] == 0
    assert r["rss_growth_mb"] is not None and r["rss_growth_mb"] <= r["rss_bound_mb"]


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak_bench", SOAK)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _write_run(soak, out: Path, pairs, n_sent: int, switch: int, per_ls: int, tamper: str) -> None:
    """The files a correct daemon writes for seq 0..n_sent-1 (pair A before `switch`, B from
    it on), then one defect."""
    from l1forge.online.datapath.storage import AcceptedWriter

    a, b = pairs
    seqs = np.arange(n_sent, dtype=np.uint64)
    src = (seqs % np.uint64(a.n)).astype(np.int64)
    use_b = seqs >= np.uint64(switch)
    bits = np.where(use_b, b.decide(seqs), a.decide(seqs))
    score = np.where(use_b, b.scores[src], a.scores[src])
    keep = np.flatnonzero(bits)
    if tamper == "drop":
        keep = np.delete(keep, len(keep) // 3)
    elif tamper == "duplicate":
        keep = np.insert(keep, 10, keep[10])
    score = score.copy()
    if tamper == "score":
        score[keep[len(keep) // 2]] += 0.25
    w = AcceptedWriter(out, 1, a.menu.names, model_names=(soak.MODEL,), min_free_mb=0)
    w.write(
        seqs[keep] // np.uint64(per_ls),
        1,
        seqs[keep],
        a.event[src[keep]],
        a.objects_hw[src[keep]],
        score[keep],
        bits[keep],
    )
    w.close()


@pytest.mark.parametrize(
    ("tamper", "field"),
    [("none", None), ("drop", "lost"), ("duplicate", "duplicated"), ("score", "mismatched")],
)
def test_soak_verifier_finds_each_defect(tmp_path, events_h5, tamper, field):
    """The soak's verdict is only as good as its check: one dropped, duplicated or altered
    event in otherwise correct files must be reported as exactly that."""
    soak = _soak_module()
    ir = qnet.save(scaled_ad(seed=5, name="soak_ad"), tmp_path / "soak_ad.json")
    pairs, *_ = soak.make_pairs(False, ir, events_h5, tmp_path)
    n_sent, switch, per_ls = 60_000, 32_768, 20_000
    run_dir = tmp_path / "run"
    _write_run(soak, run_dir, pairs, n_sent, switch, per_ls, tamper)
    v = soak.verify_run(run_dir, 1, n_sent, pairs, per_ls)
    counts = {k: v[k] for k in ("lost", "duplicated", "mismatched")}
    assert counts == {k: int(k == field) for k in counts}, v
    assert v["stored_by_pair"]["A"] > 0 and v["stored_by_pair"]["B"] > 0
    assert v["unattributed"] <= 5
