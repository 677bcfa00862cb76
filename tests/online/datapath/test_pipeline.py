"""End-to-end runs of the online data path: replay -> dispatcher -> workers -> collector -> ROOT."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uproot
import zmq

from l1forge.errors import DataFormatError
from l1forge.models import qnet
from l1forge.models.build import random_mlp
from l1forge.models.emulator import Emulator
from l1forge.online.config import run_config_from_dict
from l1forge.online.datapath.backends import outputs_float
from l1forge.online.datapath.menu import Menu, build_menu
from l1forge.online.datapath.pipeline import Pipeline, PipelineError
from l1forge.online.datapath.storage import TREE, verify_run_files
from l1forge.online.datapath.wire import TOPIC_MONITOR, TOPIC_ZERO_BIAS, decode_results
from l1forge.online.web.metrics import make_metrics
from l1forge.sim.dataset import read_events

N_RUN = 6000  # events per test run (the 1700-event file replayed in a loop)
BATCH = 256
PER_LS = 2000


def model_scores(models: dict[str, Path], x: np.ndarray) -> dict[str, np.ndarray]:
    """Each model's score (first output, real-valued) straight from the emulator."""
    out = {}
    for name, path in models.items():
        net = qnet.load(path)
        emu = Emulator(net)
        out[name] = outputs_float(net, emu.run(x))[:, 0]
        emu.close()
    return out


def seeds_for(events_h5: Path, models: dict[str, Path]) -> list[dict]:
    """Seeds whose thresholds are score quantiles of the file, so every seed fires."""
    s = model_scores(models, read_events(events_h5).inputs)
    q = lambda name, f: float(np.quantile(s[name], f))  # noqa: E731
    return [
        {"name": "AD_Loose", "model": "ad", "threshold": q("ad", 0.8)},
        {"name": "AD_Tight", "model": "ad", "threshold": q("ad", 0.97), "prescale": 2},
        {"name": "Classifier", "model": "classifier", "threshold": q("classifier", 0.9)},
        {"name": "ZeroBias", "model": "", "prescale": 25},
    ]


def make_cfg(tmp: Path, events_h5: Path, models: dict[str, Path], **over) -> object:
    """A RunConfig for a looped replay of `events_h5` (keys of `over` replace sections)."""
    raw = {
        "source": {"kind": "replay", "path": str(events_h5), "loop": True, "n_events": N_RUN},
        "backend": {"kind": "emulator", "models": {k: str(v) for k, v in models.items()}},
        "workers": {"n": 2, "credits": 2, "heartbeat_s": 0.2, "timeout_s": 2.0},
        "menu": {"seeds": seeds_for(events_h5, models)},
        "storage": {"out_dir": str(tmp), "events_per_lumisection": PER_LS, "min_free_mb": 1},
        "monitor": {"fraction": 0.25},
        "batch_size": BATCH,
        "state_dir": str(tmp / "state"),
    }
    for key, value in over.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return run_config_from_dict(raw, tmp)


def expected_run(events_h5: Path, models: dict[str, Path], menu: Menu, n: int) -> dict:
    """What a lossless run of `n` replayed events must give: bits, objects, per-seed counts."""
    ev = read_events(events_h5)
    seqs = np.arange(n, dtype=np.uint64)
    idx = (seqs % np.uint64(len(ev))).astype(np.int64)
    bits = menu.decide(model_scores(models, ev.inputs[idx]), seqs)
    return {
        "seqs": seqs,
        "bits": bits,
        "objects_hw": ev.objects_hw[idx],
        "event": ev.event[idx],
        "counts": menu.counts(bits),
    }


def stored_events(run_dir: Path) -> dict[str, np.ndarray]:
    """Every event in the run's ROOT files, sorted by sequence number."""
    parts = []
    for f in sorted(run_dir.glob("run*_ls*.root")):
        with uproot.open(f) as rf:
            parts.append(rf[TREE].arrays(["seq", "seed_bits", "objects_hw", "event"], library="np"))
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cols["seq"])
    out = {k: v[order] for k, v in cols.items()}
    out["objects_hw"] = (
        np.stack(out["objects_hw"]) if out["objects_hw"].dtype == object else out["objects_hw"]
    )
    return out


def assert_stored_equal_expected(run_dir: Path, run: int, exp: dict) -> None:
    acc = np.flatnonzero(exp["bits"])
    summary = verify_run_files(run_dir, run, expected_seqs=exp["seqs"][acc])
    assert summary.ok, summary.to_json()
    got = stored_events(run_dir)
    np.testing.assert_array_equal(got["seq"], exp["seqs"][acc])
    np.testing.assert_array_equal(got["seed_bits"], exp["bits"][acc])
    np.testing.assert_array_equal(got["event"], exp["event"][acc])
    np.testing.assert_array_equal(
        np.asarray(got["objects_hw"]).reshape(-1, 19, 3), exp["objects_hw"][acc]
    )


@pytest.fixture(scope="module")
def models(tiny_ir_path, tiny_classifier_ir_path) -> dict[str, Path]:
    return {"ad": tiny_ir_path, "classifier": tiny_classifier_ir_path}


def test_replay_run_equals_emulator_and_stores_every_accepted_event(tmp_path, events_h5, models):
    cfg = make_cfg(tmp_path, events_h5, models)
    metrics = make_metrics()
    pipe = Pipeline(cfg, 7, tmp_path / "run7", metrics=metrics)
    pipe.start()
    assert pipe.wait_source_done(120)
    summary = pipe.stop()
    value = metrics.registry.get_sample_value
    assert value("l1forge_events_in_total") == value("l1forge_events_processed_total") == N_RUN
    assert value("l1forge_events_accepted_total") == summary.n_accepted
    for seed, count in summary.per_seed.items():
        assert value("l1forge_seed_accepted_total", {"seed": seed}) == count
    assert value("l1forge_in_flight_batches") == 0
    assert value("l1forge_batch_latency_seconds_count") == N_RUN // BATCH + 1
    exp = expected_run(events_h5, models, pipe.menu, N_RUN)
    assert summary.error is None
    assert (summary.lost, summary.duplicated) == (0, 0)
    assert summary.n_events_in == summary.n_processed == N_RUN
    assert summary.per_seed == exp["counts"]
    assert all(v > 0 for v in summary.per_seed.values())
    assert summary.n_accepted == int(np.count_nonzero(exp["bits"]))
    assert summary.max_in_flight_batches <= cfg.workers.n * cfg.workers.credits
    assert [f["lumisection"] for f in summary.files] == [0, 1, 2]
    assert_stored_equal_expected(tmp_path / "run7", 7, exp)
    rate = summary.rates_hz["ZeroBias"]
    assert rate == summary.per_seed["ZeroBias"] / N_RUN * 40e6


def test_monitor_tap_and_live_model_and_menu_updates(tmp_path, events_h5, models):
    cfg = make_cfg(
        tmp_path,
        events_h5,
        models,
        source={"rate_hz": 4000.0, "n_events": None, "loop": True},
        monitor={"fraction": 1.0},
        duration_s=60.0,
    )
    pipe = Pipeline(cfg, 3, tmp_path / "run3")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        pipe.start()
        sub.connect(pipe.monitor_endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        seen: dict[bytes, list] = {TOPIC_MONITOR: [], TOPIC_ZERO_BIAS: []}
        while min(len(v) for v in seen.values()) < 2:
            topic, *frames = sub.recv_multipart()
            seen[topic].append(decode_results(frames))
        ev = read_events(events_h5)
        for r in seen[TOPIC_MONITOR]:  # sampled batches: every event with its objects
            idx = (r.seqs() % np.uint64(len(ev))).astype(np.int64)
            np.testing.assert_array_equal(r.objects_hw, ev.objects_hw[idx])
            np.testing.assert_array_equal(r.accepted_index, np.arange(len(r)))
        zb_bit = np.uint32(1 << pipe.menu.names.index("ZeroBias"))
        for r in seen[TOPIC_ZERO_BIAS]:
            assert len(r) and np.all(r.seed_bits & zb_bit)

        # a new AD network: every worker loads it, validates it and answers with its sha256
        new_ir = qnet.save(random_mlp(score=True, seed=5, name="ad_v2"), tmp_path / "ad_v2.json")
        answer = pipe.set_model("ad", new_ir)
        sha = hashlib.sha256(new_ir.read_bytes()).hexdigest()
        assert answer["sha256"] == sha
        assert len(answer["workers"]) == 2
        assert {a["sha256"] for a in answer["workers"].values()} == {sha}
        broken = tmp_path / "broken.json"
        broken.write_text('{"format": "qnet"}')
        with pytest.raises(DataFormatError):
            pipe.set_model("ad", broken)

        doc = pipe.menu.to_json()
        doc["seeds"][0]["threshold"] = 1e9  # AD_Loose can no longer fire
        answer = pipe.set_menu(doc)
        after = pipe.status()["events_in"]  # batches sent from here on run the new menu
        assert len(answer["workers"]) == 2 and all(a["ok"] for a in answer["workers"].values())
        wait_until = time.monotonic() + 30
        while pipe.status()["events_processed"] < after + 2 * BATCH:
            assert time.monotonic() < wait_until, "no events after the menu change"
            time.sleep(0.01)
        status = pipe.status()
        assert status["state"] == "running" and status["workers_alive"] == 2
    finally:
        summary = pipe.stop()
        sub.close(0)
        ctx.term()
    assert (summary.lost, summary.duplicated) == (0, 0)
    assert summary.n_processed == summary.n_events_in > 0
    stored = stored_events(tmp_path / "run3")
    late = stored["seq"] >= after
    assert late.any() and (~late).any()
    assert not np.any(stored["seed_bits"][late] & 1)  # AD_Loose is off after set_menu
    assert np.any(stored["seed_bits"][~late] & 1)


def test_worker_on_another_host_connects_over_tcp(tmp_path, events_h5, models):
    """A worker started by hand (`python -m l1forge.online.datapath.worker --connect tcp://...`)."""
    cfg = make_cfg(
        tmp_path,
        events_h5,
        models,
        workers={"n": 1, "transport": "tcp", "hosts": ["127.0.0.1"]},
        source={"n_events": 3000},
    )
    pipe = Pipeline(cfg, 4, tmp_path / "run4")
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


def test_a_worker_that_cannot_load_the_setup_fails_the_start_with_its_reason(
    tmp_path, events_h5, models
):
    (tmp_path / "fw").mkdir()  # a firmware folder without the build's packing.json
    (tmp_path / "fw" / "top.bit").write_bytes(b"")
    backend = {"kind": "pynq", "firmware_dir": "fw", "bitfile": "fw/top.bit"}
    cfg = make_cfg(tmp_path, events_h5, models, backend=backend, workers={"n": 1})
    pipe = Pipeline(cfg, 5, tmp_path / "run5")
    with pytest.raises(PipelineError, match="cannot load the run setup"):
        pipe.start()
    assert pipe.state == "error"
    with pytest.raises(PipelineError, match="did not start"):
        pipe.stop()


def test_an_unusable_run_folder_fails_the_start(tmp_path, events_h5, models):
    (tmp_path / "taken").write_text("a file where the run folder should be")
    pipe = Pipeline(make_cfg(tmp_path, events_h5, models), 6, tmp_path / "taken")
    with pytest.raises(PipelineError, match="did not start"):
        pipe.start()
    assert pipe.state == "error"


def test_default_menu_is_calibrated_on_the_replay_file(tmp_path, events_h5, models):
    cfg = make_cfg(tmp_path, events_h5, models, menu={"seeds": None})
    menu = build_menu(cfg)
    assert "ZeroBias" in menu.names and "Classifier" in menu.names
    assert all(np.isfinite(s.threshold) for s in menu.seeds if s.model)
