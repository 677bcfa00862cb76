"""The trigger worker process: started by hand on another host, and failing on a bad run setup."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from l1forge.online.datapath.pipeline import Pipeline, PipelineError


def test_worker_on_another_host_connects_over_tcp(run_cfg, running_pipeline):
    """A worker started by hand (`python -m l1forge.online.datapath.worker --connect tcp://...`)."""
    cfg = run_cfg(
        workers={"n": 1, "transport": "tcp", "hosts": ["127.0.0.1"]},
        source={"n_events": 3000},
    )
    pipe = running_pipeline(cfg, 4, start=False)
    started = threading.Thread(target=pipe.start)
    started.start()
    deadline = time.monotonic() + 60
    while not pipe.worker_endpoint and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pipe.worker_endpoint.startswith("tcp://127.0.0.1:")
    cmd = [
        sys.executable,
        "-m",
        "l1forge.online.datapath.worker",
        "--connect",
        pipe.worker_endpoint,
    ]
    cmd += ["--name", "remote-1", "--credits", "2", "--give-up-s", "60"]
    remote = subprocess.Popen(cmd)
    try:
        started.join(120)
        assert pipe.state == "running"
        assert pipe.wait_source_done(120)
        summary = pipe.stop()
        assert remote.wait(30) == 0  # told to stop at the end of the run
    finally:
        if remote.poll() is None:
            remote.kill()
            remote.wait()
    assert (summary.lost, summary.duplicated) == (0, 0)
    assert summary.n_processed == 3000


def test_a_worker_that_cannot_load_the_setup_fails_the_start_with_its_reason(tmp_path, run_cfg):
    (tmp_path / "fw").mkdir()  # a firmware folder without the build's packing.json
    (tmp_path / "fw" / "top.bit").write_bytes(b"")
    backend = {"kind": "pynq", "firmware_dir": "fw", "bitfile": "fw/top.bit"}
    cfg = run_cfg(backend=backend, workers={"n": 1})
    pipe = Pipeline(cfg, 5, tmp_path / "run5")
    with pytest.raises(PipelineError, match="cannot load the run setup"):
        pipe.start()
    assert pipe.state == "error"
    with pytest.raises(PipelineError, match="did not start"):
        pipe.stop()
