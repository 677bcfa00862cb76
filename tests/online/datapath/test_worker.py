"""The trigger worker process: started by hand on another host, failing on a bad run setup, and
swapping a model and its menu together."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from l1forge.errors import ConfigError
from l1forge.models import qnet
from l1forge.models.build import random_mlp
from l1forge.online import security
from l1forge.online.datapath.backends import ModelSwapError, make_backend, outputs_float
from l1forge.online.datapath.menu import Menu
from l1forge.online.datapath.pipeline import Pipeline, PipelineError
from l1forge.online.datapath.wire import EventBatch, encode_batch
from l1forge.online.datapath.worker import TriggerWorker
from l1forge.sim.dataset import read_events
from l1forge.sim.l1objects import N_INPUTS

from .runs import BATCH, assert_run_matches_emulator, wait_for


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
    cmd += ["--name", "remote-1", "--credits", "2", "--give-up-s", "60", "--runs", "1"]
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


def _ir_frames(path: Path) -> list[bytes]:
    """An IR's JSON and npz bytes, as the dispatcher sends them."""
    npz = path.parent / json.loads(path.read_text())["arrays_file"]
    return [path.read_bytes(), npz.read_bytes()]


def _ad_menu(threshold: float) -> str:
    seeds = [{"name": "AD", "model": "ad", "threshold": threshold}]
    return json.dumps(Menu.from_json({"seeds": seeds}).to_json())


def test_worker_swap_installs_both_or_neither(tmp_path, events_h5, tiny_ir_path):
    """TriggerWorker.swap: the next batch runs on the new network and its menu; a swap refused
    for its menu or for its network leaves the old pair running."""
    ev = read_events(events_h5)
    batch = EventBatch(1, 0, 0, ev.event[:500], ev.objects_hw[:500].astype(np.int16))
    x = batch.objects_hw.reshape(500, N_INPUTS)
    new_ir = qnet.save(random_mlp(score=True, seed=5, name="ad_v2"), tmp_path / "ad_v2.json")
    w = TriggerWorker("w", tmp_path)
    head = {"backend": {"kind": "emulator"}, "models": ["ad"], "menu": _ad_menu(0.5)}
    w.configure(head, _ir_frames(tiny_ir_path))
    try:
        before = w.process(encode_batch(batch))
        sha, menu_sha = w.swap("ad", *_ir_frames(new_ir), _ad_menu(2.0))
        assert sha == hashlib.sha256(new_ir.read_bytes()).hexdigest()
        assert menu_sha == hashlib.sha256(_ad_menu(2.0).encode()).hexdigest() == w.menu_sha256
        after = w.process(encode_batch(batch))
        for result, ir, threshold in ((before, tiny_ir_path, 0.5), (after, new_ir, 2.0)):
            net = qnet.load(ir)
            backend = make_backend("emulator", net=net)
            expected = outputs_float(net, backend.infer(x))[:, 0]
            backend.close()
            np.testing.assert_array_equal(result.scores[:, 0], expected)
            np.testing.assert_array_equal(
                result.seed_bits, (expected > threshold).astype(np.uint32)
            )
        assert not np.array_equal(before.scores, after.scores)
        # refused: a menu naming a model the run does not have; a network of another layout
        bad_menu = json.dumps({"seeds": [{"name": "X", "model": "cls", "threshold": 0.0}]})
        with pytest.raises(ConfigError, match="cls"):
            w.swap("ad", *_ir_frames(tiny_ir_path), bad_menu)
        wide = qnet.save(random_mlp(n_out=2, score=False, seed=3), tmp_path / "wide.json")
        with pytest.raises(ModelSwapError):
            w.swap("ad", *_ir_frames(wide), _ad_menu(0.5))
        again = w.process(encode_batch(batch))
        np.testing.assert_array_equal(again.scores, after.scores)
        np.testing.assert_array_equal(again.seed_bits, after.seed_bits)
        assert (w.models[0].sha256, w.menu_sha256) == (sha, menu_sha)
    finally:
        w.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_remote_worker_alone_serves_run_after_run(tmp_path, events_h5, models, run_cfg):
    """`workers.n: 0` and a fixed `network.worker_port` with CURVE: one worker process started
    as a remote host starts it (`python -m l1forge.cli online worker --connect tcp://...`)
    processes every event of run 1, outlives the end of the run, and processes every event of
    run 2 of the same daemon; both runs' files hold each event exactly once."""
    keys = security.generate_keys(tmp_path / "keys")
    port = _free_port()
    n = 3000
    cfg = run_cfg(
        workers={"n": 0, "transport": "tcp", "hosts": ["127.0.0.1"]},
        network={"worker_port": port, "curve_keys": str(keys.folder)},
        source={"n_events": n},
    )
    cmd = [sys.executable, "-m", "l1forge.cli", "online", "worker"]
    cmd += ["--connect", f"tcp://127.0.0.1:{port}", "--curve-keys", str(keys.folder)]
    cmd += ["--name", "remote-a", "--credits", "2", "--heartbeat-s", "0.2"]
    remote = subprocess.Popen(cmd)  # before the daemon binds: ZeroMQ connects when it does
    try:
        for run in (31, 32):
            pipe = Pipeline(cfg, run, tmp_path / f"run{run}")
            try:
                pipe.start()  # returns once the remote worker loaded this run's setup
                assert pipe.worker_endpoint == f"tcp://127.0.0.1:{port}"
                assert pipe.wait_source_done(120)
                wait_for(lambda p=pipe: p.status()["events_processed"] == n, what="the run")
                workers = pipe.status()["workers"]
                assert list(workers) == ["remote-a"]
                assert workers["remote-a"]["pid"] == remote.pid
                assert workers["remote-a"]["batches_done"] == -(-n // BATCH)
                summary = pipe.stop()
            finally:
                if pipe.state not in ("created", "stopped"):
                    with contextlib.suppress(PipelineError):
                        pipe.stop()
            assert summary.n_processed == summary.n_events_in == n
            assert_run_matches_emulator(summary, pipe, events_h5, models, n)
            assert remote.poll() is None  # told to stop at the end of the run, still serving
    finally:
        remote.terminate()
        remote.wait(30)


def test_remote_worker_settings_are_checked(run_cfg):
    with pytest.raises(ConfigError, match=r"workers\.hosts: workers\.n is 0"):
        run_cfg(workers={"n": 0})
    with pytest.raises(ConfigError, match=r"workers\.transport: remote workers"):
        run_cfg(workers={"hosts": ["elsewhere"], "transport": "ipc"})
