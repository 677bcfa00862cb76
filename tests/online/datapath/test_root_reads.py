"""ROOT itself (PyROOT and RDataFrame, ROOT 6.40 in its own venv) reads what a run writes.

uproot writes the files and the other tests read them back with uproot; here a different
reader, the reference implementation, opens them in a separate process that imports nothing of
l1forge (``scripts/root_read.py``). What it sees is compared with what the emulator and the
run's menu say the run must hold, not with the pipeline's own counters.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import uproot

from l1forge.online.datapath.storage import verify_run_files

from .runs import N_RUN, expected_run

REPO = Path(__file__).resolve().parents[3]
ROOT_PYTHON = REPO / ".venv-root" / "bin" / "python"
SCRIPT = REPO / "scripts" / "root_read.py"

pytestmark = pytest.mark.slow  # make validate sets up .venv-root (make root-venv) first


def root_read(run_dir: Path, dqm_file: Path) -> dict:
    if not ROOT_PYTHON.is_file():
        pytest.fail(f"{ROOT_PYTHON} missing: run `make root-venv` (make validate does)")
    out = subprocess.run(
        [str(ROOT_PYTHON), str(SCRIPT), str(run_dir), str(dqm_file)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_root_reads_the_event_and_dqm_files_of_a_run(
    tmp_path, events_h5, models, run_cfg, running_pipeline, running_dqm
):
    cfg = run_cfg(monitor={"fraction": 1.0})
    pipe = running_pipeline(cfg, 11, start=False)
    started = []

    def subscribe(p):  # the DQM subscribes before the source starts (as run control does)
        started.append(
            running_dqm(
                p.monitor_endpoint,
                run=11,
                out_dir=tmp_path / "dqm",
                seed_names=p.menu.names,
                score_names=p.model_names,
                input_rate_hz=p.menu.input_rate_hz,
            )
        )

    pipe.start(tap_subscriber=subscribe)
    (dqm,) = started
    assert pipe.wait_source_done(120)
    summary = pipe.stop()
    dqm_result = dqm.stop(expected_batches=summary.tap_batches)
    exp = expected_run(events_h5, models, pipe.menu, N_RUN)
    acc = np.flatnonzero(exp["bits"])
    assert verify_run_files(pipe.run_dir, 11, expected_seqs=exp["seqs"][acc]).ok

    seen = root_read(pipe.run_dir, dqm_result.root_path)
    assert seen["root_version"].startswith("6.")
    files = seen["files"]
    manifest = json.loads((pipe.run_dir / "run000011_files.json").read_text())
    assert sorted(files) == sorted(f["path"] for f in manifest["files"])
    for f in manifest["files"]:
        assert files[f["path"]]["entries"] == f["n_events"]
        assert {"run", "seq", "event", "lumisection", "seed_bits", "objects_hw"} <= set(
            files[f["path"]]["branches"]
        )
    seqs = sorted(s for f in files.values() for s in f.get("seq", []))
    assert seqs == [int(s) for s in exp["seqs"][acc]]  # each accepted event once, no other
    assert sum(f.get("seed_bits_sum", 0) for f in files.values()) == int(exp["bits"][acc].sum())
    assert sum(f.get("objects_hw_sum", 0) for f in files.values()) == int(
        exp["objects_hw"][acc].astype(np.int64).sum()
    )

    # The DQM file: every histogram ROOT sees has the integral uproot sees; with every batch on
    # the tap (fraction 1.0) the MET histogram holds every event of the run.
    hists = seen["dqm"]
    assert hists["met/pt"]["integral"] == N_RUN
    with uproot.open(dqm_result.root_path) as f:
        for name, h in hists.items():
            assert h["integral"] == pytest.approx(float(f[name].values(flow=True).sum()), abs=0)
