"""End-to-end runs of the online data path: replay -> dispatcher -> workers -> collector -> ROOT."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import zmq

from l1forge.errors import DataFormatError
from l1forge.models import qnet
from l1forge.models.build import random_mlp
from l1forge.online.datapath.menu import build_menu
from l1forge.online.datapath.pipeline import Pipeline, PipelineError
from l1forge.online.datapath.wire import TOPIC_MONITOR, TOPIC_ZERO_BIAS, decode_results
from l1forge.online.web.metrics import make_metrics
from l1forge.sim.dataset import read_events

from .runs import BATCH, N_RUN, assert_stored_equal_expected, expected_run, stored_events


def test_replay_run_equals_emulator_and_stores_every_accepted_event(
    tmp_path, events_h5, models, run_cfg, running_pipeline
):
    cfg = run_cfg()
    metrics = make_metrics()
    pipe = running_pipeline(cfg, 7, metrics=metrics)
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


def test_monitor_tap_and_live_model_and_menu_updates(
    tmp_path, events_h5, run_cfg, zmq_ctx, running_pipeline
):
    cfg = run_cfg(
        source={"rate_hz": 4000.0, "n_events": None, "loop": True},
        monitor={"fraction": 1.0},
        duration_s=60.0,
    )
    sub = zmq_ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVTIMEO, 10_000)
    pipe = running_pipeline(cfg, 3)
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
    summary = pipe.stop()
    assert (summary.lost, summary.duplicated) == (0, 0)
    assert summary.n_processed == summary.n_events_in > 0
    stored = stored_events(tmp_path / "run3")
    late = stored["seq"] >= after
    assert late.any() and (~late).any()
    assert not np.any(stored["seed_bits"][late] & 1)  # AD_Loose is off after set_menu
    assert np.any(stored["seed_bits"][~late] & 1)


def test_an_unusable_run_folder_fails_the_start(tmp_path, run_cfg):
    (tmp_path / "taken").write_text("a file where the run folder should be")
    pipe = Pipeline(run_cfg(), 6, tmp_path / "taken")
    with pytest.raises(PipelineError, match="did not start"):
        pipe.start()
    assert pipe.state == "error"


def test_default_menu_is_calibrated_on_the_replay_file(run_cfg):
    cfg = run_cfg(menu={"seeds": None})
    menu = build_menu(cfg)
    assert "ZeroBias" in menu.names and "Classifier" in menu.names
    assert all(np.isfinite(s.threshold) for s in menu.seeds if s.model)
