"""Continual learner: replay buffer, recalibration on drift, a QAT fine-tune cycle whose IR is
bit-exact and swapped into a running emulator backend, rejection, and the monitoring tap.

A tiny VAE (57 -> 8 -> 2) trained for two epochs by ``l1forge.models.train`` (conftest.py) is
the starting version; events are synthetic zero-bias-like hardware events (see events.py), the
drift is a 30 % calorimeter energy scale from ``l1forge.sim.faults``.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from scipy import stats

from l1forge.models.emulator import Emulator
from l1forge.online.datapath.menu import Menu, Seed
from l1forge.online.learning.acceptance import rate_agreement
from l1forge.online.learning.drift import DriftConfig
from l1forge.online.learning.feed import run_subscriber
from l1forge.online.learning.learner import Learner, score
from l1forge.online.learning.registry import ModelRegistry, import_training_run
from l1forge.online.learning.replay import ReplayBuffer
from l1forge.online.learning.settings import LearnerConfig
from l1forge.sim.faults import EnergyScale, inject

from .events import event_file, signal_like, zero_bias_like

DRIFT = EnergyScale(0.30)
CFG = LearnerConfig(
    check_events=2000,
    adapt_events=4000,
    replay_capacity=4000,
    epochs=1,
    batch_size=256,
    learning_rate=3e-3,
    verify_vectors=1500,
    max_tpr_loss=1.0,  # any efficiency is accepted here; rejection is tested separately
    candidates=(),  # the fine-tune alone; candidates are tested separately
    runtime_first=False,  # straight to training; the run-time path is tested separately
    drift=DriftConfig(min_events=1000),
)


def test_replay_buffer_is_a_uniform_sample():
    """Every offered event is kept with probability capacity / seen (chi2 over deciles, p > 1e-3;
    seeded, so deterministic)."""
    buf = ReplayBuffer(1000, 1, seed=5)
    for start in range(0, 10000, 700):
        buf.add(np.arange(start, min(start + 700, 10000))[:, None])
    assert len(buf) == 1000 and buf.seen == 10000
    values = buf.data[:, 0]
    assert len(np.unique(values)) == 1000
    counts = np.bincount(values // 1000, minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3
    assert len(np.unique(buf.sample(300))) == 300


def _menu() -> Menu:
    return Menu(
        (
            Seed("AD_Loose", "ad", target_rate_hz=2e6),  # 5 % of zero bias
            Seed("AD_Tight", "ad", target_rate_hz=4e5),  # 1 %
            Seed("Classifier", "classifier", target_rate_hz=1e3),  # another model's seed
            Seed("ZeroBias", "", prescale=1000),
        )
    )


def _learner(tmp_path, trained_run, cfg, **kw):
    reg = ModelRegistry(tmp_path / "registry")
    v1 = import_training_run(reg, trained_run)
    ref = zero_bias_like(4000, seed=20)
    cls_scores = np.arange(100000.0)  # the other model's zero-bias scores (not the learner's)
    menu = _menu().calibrate({"ad": score(v1.load_net(), ref), "classifier": cls_scores})
    learner = Learner(
        reg,
        menu,
        ref,
        config=cfg,
        signal_holdout={"sig": signal_like(600, seed=21)},
        transform_signal=lambda x: inject(DRIFT, x.reshape(len(x), 19, 3)),
        **kw,
    )
    return reg, v1, learner


def _rates_ok(menu: Menu, net, events: np.ndarray) -> dict[str, float]:
    s = score(net, events)
    out = {}
    for seed in menu.seeds:
        if seed.model == "ad":
            f = seed.target_rate_hz / menu.input_rate_hz
            n_pass = int(np.count_nonzero(s > seed.threshold))
            assert rate_agreement(n_pass, f * len(s), 0.10), (seed.name, n_pass, f * len(s))
            out[seed.name] = n_pass / (f * len(s)) - 1
    return out


def test_drift_recalibrates_then_fine_tunes_bitexact_and_swaps(tmp_path, trained_run):
    from l1forge.online.datapath.backends import EmulatorBackend

    backend = EmulatorBackend(trained_run / "encoder.qnet.json")
    menus, models = [], []

    def on_model(name, path):
        models.append((name, path))
        backend.swap(path)

    reg, v1, learner = _learner(tmp_path, trained_run, CFG, on_menu=menus.append, on_model=on_model)
    assert reg.active_name == "v0001" and v1.weights_path is not None
    # clean conditions: no drift, no menu change
    assert learner.observe(zero_bias_like(2000, seed=30), run=1, lumisection=1) is None
    assert not learner.reports[-1].drifted and menus == []
    # drifted conditions: the first window is flagged and the menu recalibrated at once
    drifted = [inject(DRIFT, zero_bias_like(1000, seed=40 + i)) for i in range(4)]
    assert learner.observe(drifted[0], run=1, lumisection=2) is None
    assert learner.observe(drifted[1], run=1, lumisection=3) is None
    assert learner.reports[-1].drifted and len(menus) == 1
    fresh = inject(DRIFT, zero_bias_like(12000, seed=99))
    # the old thresholds on drifted events give a wrong rate; the recalibrated ones hold it
    old_s = score(v1.load_net(), fresh)
    assert np.mean(old_s > learner.detector.seeds["AD_Loose"][0]) > 0.05 * 1.3
    _rates_ok(menus[0], v1.load_net(), fresh)
    # two more windows complete the 4000 new events: fine-tune, verify, register, swap
    assert learner.observe(drifted[2], run=1, lumisection=4) is None
    result = learner.observe(drifted[3], run=1, lumisection=5)
    assert result is not None and result.accepted, result.reasons
    v2 = reg.get(result.version)
    assert reg.active_name == v2.name == "v0002" and v2.parent == "v0001"
    prov = v2.provenance
    assert prov["data"]["train_new_events"] + prov["data"]["holdout_events"] == 4000
    assert prov["data"]["train_replay_events"] > 0 and prov["data"]["lumisections"] == [2, 5]
    assert prov["verification"]["equal"] and prov["verification"]["bitexact_vectors"] >= 1500
    assert prov["drift"]["drifted"] and "signal_tpr" in prov["metrics"]
    # the stored Keras weights rebuild exactly the stored IR (corners + random vectors)
    _check_weights_match_ir(v2)
    # the backend runs the new version; the menu sent last was calibrated for it
    assert models == [("ad", v2.qnet_path)]
    x = fresh.reshape(len(fresh), -1)[:3000]
    new_net = v2.load_net()
    assert_array_equal(backend.infer(x), Emulator(new_net).run(x))
    assert menus[-1].to_json() == v2.menu()
    assert menus[-1].names == learner.menu.names == _menu().names  # the run's seeds, in order
    assert menus[-1].seeds[2].threshold == 99997.0  # another model's seed is left alone
    _rates_ok(menus[-1], new_net, fresh)
    # rollback returns to v0001 in one call
    assert reg.rollback().name == "v0001"
    backend.close()


def _check_weights_match_ir(version) -> None:
    from l1forge.models import networks
    from l1forge.models.finetune import scaling_of
    from l1forge.models.vectors import bitexact_vectors
    from l1forge.online.learning.learner import net_config_of

    net = version.load_net()
    cfg = net_config_of(version)
    m = networks.vae_models(cfg, scaling_of(net), 0.01)
    m.vae.load_weights(str(version.weights_path))
    deploy = networks.deploy_model(cfg, scaling_of(net), m.hardware)
    x = bitexact_vectors(net, 2000, seed=3)
    assert_array_equal(networks.exact_predict(deploy, x), Emulator(net).run_float(x))


def test_a_candidate_worse_than_its_parent_is_kept_but_not_activated(tmp_path, trained_run):
    """Candidates failing the efficiency checks (new conditions, and the old conditions of
    ``reference_signal``) are all tried in order, registered and none activated."""
    import dataclasses

    # demands twice the parent's efficiency, on the new and on the old conditions
    cfg = dataclasses.replace(
        CFG, max_tpr_loss=-1.0, max_old_tpr_loss=-1.0, candidates=({}, {"seed": 2})
    )
    models, menus = [], []
    reg, v1, learner = _learner(
        tmp_path,
        trained_run,
        cfg,
        on_menu=menus.append,
        on_model=lambda *a: models.append(a),
        reference_signal={"sig": signal_like(600, seed=22)},
    )
    learner.force_adaptation()
    result = None
    for i in range(4):
        result = learner.observe(inject(DRIFT, zero_bias_like(1000, seed=60 + i)))
    assert result is not None and not result.accepted
    assert "signal efficiency" in result.reasons[0]
    assert any("old-conditions signal efficiency" in r for r in result.reasons)
    assert result.candidates == ("v0002", "v0003")
    assert reg.names() == ["v0001", "v0002", "v0003"] and reg.active_name == "v0001"
    prov = reg.get("v0002").provenance
    assert prov["accepted"] is False and prov["rejected_because"] == list(result.reasons)
    assert reg.get("v0003").provenance["candidate"] == {
        "index": 1,
        "tried": 2,
        "of": 2,
        "choice": "first",
    }
    assert models == [] and learner.version.name == "v0001"
    _rates_ok(menus[-1], v1.load_net(), inject(DRIFT, zero_bias_like(12000, seed=98)))


def test_learner_reads_the_zero_bias_tap(tmp_path, trained_run):
    """Zero-bias ResultBatches published on a PUB socket reach the learner; bad frames are
    counted, not fatal."""
    import zmq

    from l1forge.online.datapath.wire import ResultBatch, encode_results

    _, _, learner = _learner(tmp_path, trained_run, CFG)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    out: dict = {}
    t = threading.Thread(
        target=lambda: out.update(
            run_subscriber(learner, f"tcp://127.0.0.1:{port}", stop, poll_ms=50, context=ctx)
        )
    )
    t.start()
    try:
        ev = zero_bias_like(500, seed=70).astype(np.int32)
        n = len(ev)
        batch = ResultBatch(
            run=3,
            first_seq=0,
            lumisection=7,
            event=np.arange(n, dtype=np.uint64),
            scores=np.zeros((n, 1)),
            seed_bits=np.ones(n, dtype=np.uint32),
            objects_hw=ev,
            accepted_index=np.arange(n, dtype=np.uint32),
            latency_s=0.0,
            worker="w0",
        )
        frames = [b"zb", *encode_results(batch)]
        deadline = threading.Event()
        for _ in range(400):  # a SUB joins asynchronously: publish until it has seen events
            pub.send_multipart(frames)
            pub.send_multipart([b"zb", b"garbage"])
            if learner.n_seen >= 1000 or deadline.wait(0.02):
                break
    finally:
        stop.set()
        t.join(timeout=10)
        pub.close(linger=0)
        ctx.term()
    assert learner.n_seen >= 1000 and learner.n_seen % 500 == 0
    assert out["events"] == learner.n_seen and out["rejected"] >= 1


def test_the_tap_is_drained_while_the_learner_trains(tmp_path, trained_run):
    """Training runs off the subscriber: zero-bias batches published while a network trains
    all arrive (counted by the publisher here, not by the feed), the learner's backlog grows
    meanwhile, and every event is observed before run_subscriber returns."""
    import dataclasses
    import time

    import zmq

    from l1forge.online.datapath.wire import ResultBatch, encode_results

    # no drift alarm on the events sent after the adaptation (they are of the new conditions)
    cfg = dataclasses.replace(CFG, drift=DriftConfig(min_events=1000, alpha=1e-12))
    _, _, learner = _learner(tmp_path, trained_run, cfg)

    def frames(ev: np.ndarray, run: int) -> list:
        n = len(ev)
        b = ResultBatch(
            run=run,
            first_seq=0,
            lumisection=1,
            event=np.arange(n, dtype=np.uint64),
            scores=np.zeros((n, 1)),
            seed_bits=np.ones(n, dtype=np.uint32),
            objects_hw=ev.astype(np.int32),
            accepted_index=np.arange(n, dtype=np.uint32),
            latency_s=0.0,
            worker="w0",
        )
        return [b"zb", *encode_results(b)]

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    out: dict = {}
    t = threading.Thread(
        target=lambda: out.update(
            run_subscriber(learner, f"tcp://127.0.0.1:{port}", stop, poll_ms=50, context=ctx)
        )
    )
    t.start()
    sent = 0
    try:
        warm = frames(zero_bias_like(1, seed=80), run=99)
        for _ in range(500):  # the SUB joins asynchronously
            pub.send_multipart(warm)
            if learner.n_seen or stop.wait(0.02):
                break
        time.sleep(0.5)
        n0 = learner.n_seen  # warm-up events that arrived, all observed by now
        learner.force_adaptation()
        drifted = inject(DRIFT, zero_bias_like(4000, seed=81))
        for i in range(0, 4000, 500):  # enough new events to start a fine-tune
            pub.send_multipart(frames(drifted[i : i + 500], run=1))
            sent += 500
        pool = inject(DRIFT, zero_bias_like(80_000, seed=82))  # more of the new conditions
        deadline = time.monotonic() + 300
        n_during = 0
        while not learner.adaptations and time.monotonic() < deadline:
            if n_during < 4000:  # paced: the PUB's queue never fills
                pub.send_multipart(frames(pool[20 * n_during : 20 * n_during + 20], run=2))
                sent += 20
                n_during += 1
            time.sleep(0.002)
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(timeout=600)
        pub.close(linger=0)
        ctx.term()
    assert not t.is_alive()
    assert len(learner.adaptations) == 1
    assert out["events"] - n0 == sent, (out, n0, sent)
    assert learner.n_seen == out["events"] and out["backlog_dropped_events"] == 0
    assert out["max_backlog_events"] > 2000, out  # the subscriber queued while training ran


@pytest.mark.slow
def test_end_to_end_with_the_daemon_pipeline(tmp_path, trained_run, zmq_ctx, running_pipeline):
    """A running pipeline on drifted events: the learner on its zero-bias tap recalibrates the
    menu and swaps a fine-tuned network into the workers without stopping the run."""
    import zmq

    from l1forge.online.config import run_config_from_dict
    from l1forge.online.datapath.wire import TOPIC_ZERO_BIAS, decode_results

    reg, v1, learner_proto = _learner(tmp_path, trained_run, CFG)
    menu = learner_proto.menu
    drifted = event_file(tmp_path / "drifted.h5", inject(DRIFT, zero_bias_like(6000, seed=80)))
    seeds = [
        {
            "name": s.name,
            "model": s.model,
            "threshold": s.threshold,
            "target_rate_hz": s.target_rate_hz,
        }
        for s in menu.seeds
        if s.model == "ad"
    ] + [{"name": "ZeroBias", "model": "", "prescale": 1}]  # every event reaches the tap
    raw = {
        "source": {"kind": "replay", "path": str(drifted), "loop": True, "rate_hz": 3000.0},
        "backend": {"kind": "emulator", "models": {"ad": str(v1.qnet_path)}},
        "workers": {"n": 1, "credits": 2, "heartbeat_s": 0.2, "timeout_s": 5.0},
        "menu": {"seeds": seeds},
        "storage": {"out_dir": str(tmp_path / "runs"), "events_per_lumisection": 1000},
        "monitor": {"fraction": 0.0, "dqm_enabled": False},
        "batch_size": 500,
        "state_dir": str(tmp_path / "state"),
        "duration_s": 600.0,
    }
    pipe = running_pipeline(run_config_from_dict(raw, tmp_path), 1, start=False)
    learner = Learner(
        reg,
        pipe.menu,
        zero_bias_like(4000, seed=20),
        config=CFG,
        on_menu=pipe.set_menu,
        on_model=pipe.set_model,
    )
    stop = threading.Event()
    sub = zmq_ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    try:
        pipe.start()
        sub.connect(pipe.monitor_endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, TOPIC_ZERO_BIAS)
        t = threading.Thread(
            target=run_subscriber, args=(learner, pipe.monitor_endpoint, stop), daemon=True
        )
        t.start()
        deadline = threading.Event()
        for _ in range(600):
            if learner.adaptations or deadline.wait(0.5):
                break
        assert learner.adaptations and learner.adaptations[0].accepted
        new = reg.get(learner.adaptations[0].version)
        assert pipe.menu.to_json() == learner.menu.to_json() == new.menu()
        # batches computed after the swap carry the new network's scores
        emu = Emulator(new.load_net())
        matched = False
        for _ in range(200):
            if not sub.poll(10_000):
                break
            r = decode_results(sub.recv_multipart()[1:])
            x = r.objects_hw.reshape(len(r.objects_hw), -1)
            if np.array_equal(r.scores[r.accepted_index, 0], emu.run_float(x)[:, 0]):
                matched = True
                break
        assert matched, "no zero-bias batch was scored by the fine-tuned network"
        assert pipe.status()["state"] == "running"
    finally:
        stop.set()
    summary = pipe.stop()
    assert (summary.lost, summary.duplicated) == (0, 0)


def test_distillation_and_anchor_keep_the_child_near_its_parent(trained_run, tmp_path):
    """On a tiny VAE (2 epochs), the distillation term brings the child's scores on held-out old
    events closer to the parent's, and the weight anchor brings its latent layer's weights closer,
    than the same fine-tune without them (seeded, so deterministic)."""
    import dataclasses

    from l1forge.models.finetune import fine_tune, flat_inputs
    from l1forge.online.learning.learner import net_config_of

    reg = ModelRegistry(tmp_path / "registry")
    v1 = import_training_run(reg, trained_run)
    parent = v1.load_net()
    x_new = flat_inputs(inject(DRIFT, zero_bias_like(1500, seed=80)))
    x_old = flat_inputs(zero_bias_like(1500, seed=81))
    x_check = zero_bias_like(1000, seed=82)
    s_parent = score(parent, x_check)

    def tuned(i: int, **kw):
        cfg = dataclasses.replace(CFG, epochs=1, learning_rate=1e-2, **kw)
        x_train = np.concatenate([x_new, x_old])
        out = tmp_path / f"w{i}.weights.h5"
        return fine_tune(
            net_config_of(v1), parent, v1.weights_path, x_train, cfg, out, 0.01, x_new, x_old
        )

    def score_gap(t) -> float:
        return float(np.mean((score(t.net, x_check) - s_parent) ** 2))

    def weight_gap(t) -> float:
        w = t.net.layer("mu_dense").arrays["weight"] - parent.layer("mu_dense").arrays["weight"]
        return float(np.sum(w.astype(np.float64) ** 2))

    plain, distilled = tuned(0), tuned(1, distill_weight=10.0)
    anchored = tuned(2, anchor_weight=100.0)
    assert score_gap(distilled) < 0.5 * score_gap(plain), (score_gap(distilled), score_gap(plain))
    assert weight_gap(anchored) < 0.5 * weight_gap(plain), (weight_gap(anchored), weight_gap(plain))


def test_candidates_are_all_registered_and_the_best_passing_one_goes_live(tmp_path, trained_run):
    """Two candidate settings: both registered with provenance; the one with the higher held-out
    efficiency is activated, the other kept with the reason."""
    import dataclasses

    cfg = dataclasses.replace(
        CFG, candidates=({}, {"seed": 2, "learning_rate": 1e-3}), candidate_choice="best"
    )
    models = []
    reg, _v1, learner = _learner(
        tmp_path,
        trained_run,
        cfg,
        reference_signal={"sig": signal_like(600, seed=22)},
        on_model=lambda *a: models.append(a),
    )
    learner.force_adaptation()
    result = None
    for i in range(4):
        result = learner.observe(inject(DRIFT, zero_bias_like(1000, seed=60 + i)))
    assert result is not None and result.accepted, result.reasons
    assert result.candidates == ("v0002", "v0003") and reg.active_name == result.version
    assert models == [("ad", reg.get(result.version).qnet_path)]
    other = reg.get(({"v0002", "v0003"} - {result.version}).pop()).provenance
    chosen = reg.get(result.version).provenance
    assert chosen["accepted"] and chosen["passed_checks"] and "old_conditions" in chosen["metrics"]
    assert other["passed_checks"] and not other["accepted"]
    assert "higher held-out efficiency" in other["rejected_because"][0]

    def efficiency(prov) -> float:
        return float(
            np.mean([v for p in prov["metrics"]["signal_tpr"].values() for v in p.values()])
        )

    assert efficiency(chosen) >= efficiency(other)
    assert {chosen["seeds"]["training"], other["seeds"]["training"]} == {0, 2}


# ---- the run-time path: thresholds and input scaling through the registers, no training ------


def _adapt_on_drift(learner, seed0: int = 60):
    learner.force_adaptation()
    result = None
    for i in range(4):
        result = learner.observe(inject(DRIFT, zero_bias_like(1000, seed=seed0 + i)))
    assert result is not None
    return result


def test_matched_scaling_undoes_a_pedestal_and_a_doubling_exactly(tmp_path, trained_run):
    """Inputs moved by an integer pedestal get offsets moved by it (shifts kept); inputs doubled
    get one more shift and doubled offsets. Either way the network with the new registers gives
    on the new inputs exactly (bit for bit) the outputs the old one gives on the old inputs."""
    from l1forge.firmware.registers import split_scaling, with_scaling
    from l1forge.online.learning.runtime import matched_scaling, runtime_changes

    net = import_training_run(ModelRegistry(tmp_path / "reg"), trained_run).load_net()
    scaling, _ = split_scaling(net)
    assert scaling is not None
    o_old, s_old = (scaling.scale.arrays[k].astype(np.int64) for k in ("offset", "shift"))
    x = zero_bias_like(4000, seed=30).reshape(4000, -1).astype(np.int64) // 2
    pedestal = np.random.default_rng(3).integers(-7, 8, x.shape[1])
    offset, shift = matched_scaling(net, x, x + pedestal, keep_shift=True)
    assert_array_equal(offset, o_old + pedestal)
    assert_array_equal(shift, s_old)
    with Emulator(net) as a, Emulator(with_scaling(net, offset, shift)) as b:
        assert_array_equal(b.run(x + pedestal), a.run(x))
    # doubled where the SHIFT register has room for one more (the others stay at their maximum)
    room = (s_old < scaling.shift_hi) & (x.std(axis=0) > 0)
    assert room.sum() >= 10
    x2 = x.copy()
    x2[:, room] *= 2
    offset, shift = matched_scaling(net, x, x2)
    assert_array_equal(shift, np.where(room, s_old + 1, s_old))
    assert_array_equal(offset[room], 2 * o_old[room])
    with Emulator(net) as a, Emulator(with_scaling(net, offset, shift)) as b:
        assert_array_equal(b.run(x2), a.run(x))
    full = matched_scaling(net, x, 2 * x)[1]  # where there is no room: clipped to the range
    at_max = (s_old == scaling.shift_hi) & (x.std(axis=0) > 0)
    assert full.max() <= scaling.shift_hi and np.all(full[at_max] == scaling.shift_hi)
    kinds = [c.kind for c in runtime_changes(net, x, 2 * x)]
    assert kinds == ["thresholds", "offsets", "scaling"]
    assert [c.kind for c in runtime_changes(net, x, x)] == ["thresholds"]  # nothing to move
    assert [c.kind for c in runtime_changes(net, x, 2 * x, ("thresholds",))] == ["thresholds"]


def test_a_drift_the_thresholds_absorb_takes_the_register_path_without_training(
    tmp_path, trained_run
):
    """Drifted events whose signal efficiency recalibrated thresholds keep: the thresholds go
    out (set_menu), no network is trained or registered, set_model is never sent, and the new
    thresholds give the target rates on fresh drifted events."""
    import dataclasses

    models, scalings, menus = [], [], []
    cfg = dataclasses.replace(CFG, runtime_first=True)
    reg, v1, learner = _learner(
        tmp_path,
        trained_run,
        cfg,
        reference_signal={"sig": signal_like(600, seed=22)},
        on_model=lambda *a: models.append(a),
        on_scaling=lambda *a: scalings.append(a),
        on_menu=menus.append,
    )
    assert learner.live_efficiency is not None and learner.live_efficiency > 0.1
    result = _adapt_on_drift(learner)
    assert result.accepted and result.path == "registers", result.why
    assert result.why[-1] == "thresholds: passed every check"
    assert result.candidates == () and reg.names() == [v1.name] and reg.active_name == v1.name
    assert models == [] and scalings == [] and menus[-1] is learner.menu
    # the thresholds are those calibrated on the drifted events fed (recomputed here) ...
    fed = np.concatenate([inject(DRIFT, zero_bias_like(1000, seed=60 + i)) for i in range(4)])
    expect = Menu(tuple(s for s in _menu().seeds if s.model == "ad")).calibrate(
        {"ad": score(v1.load_net(), fed)}
    )
    got = {s.name: s.threshold for s in learner.menu.seeds if s.model == "ad"}
    assert got == {s.name: s.threshold for s in expect.seeds}
    # ... and give the target rates on fresh drifted events, within 3 sigma of the calibration
    # (4000 events) and test (20000) statistics together
    s = score(v1.load_net(), inject(DRIFT, zero_bias_like(20000, seed=90)))
    for seed in expect.seeds:
        f = seed.target_rate_hz / expect.input_rate_hz
        n_pass, n_exp = int(np.count_nonzero(s > seed.threshold)), f * len(s)
        assert abs(n_pass - n_exp) <= 3 * np.sqrt(n_exp * (1 + len(s) / len(fed))), seed.name


def test_an_input_scaling_change_is_written_as_registers_and_registered(tmp_path, trained_run):
    """Only the offsets path allowed: the new offsets reach ``on_scaling`` (the daemon's
    set_scaling), the registered version is the parent's IR with exactly those registers and
    the parent's weights file, and it is the learner's live network."""
    import dataclasses

    from l1forge.firmware.registers import with_scaling

    scalings, models = [], []
    cfg = dataclasses.replace(
        CFG, runtime_first=True, runtime_kinds=("offsets",), runtime_min_efficiency=0.0
    )
    reg, v1, learner = _learner(
        tmp_path,
        trained_run,
        cfg,
        on_scaling=lambda o, s: scalings.append((o.copy(), s.copy())),
        on_model=lambda *a: models.append(a),
    )
    result = _adapt_on_drift(learner)
    assert result.path == "registers" and result.why[-1] == "offsets: passed every check"
    assert models == [] and len(scalings) == 1
    offset, shift = scalings[0]
    v2 = reg.get(result.version)
    assert result.candidates == (v2.name,) and reg.active_name == v2.name
    prov = v2.provenance
    assert prov["kind"] == "registers" and prov["parent"] == v1.name
    assert prov["runtime"] == {
        "kind": "offsets",
        "offset": offset.tolist(),
        "shift": shift.tolist(),
    }
    assert prov["sha256"]["keras.weights.h5"] == v1.provenance["sha256"]["keras.weights.h5"]
    expect = with_scaling(v1.load_net(), offset, shift)
    got = v2.load_net()
    assert [lay.arrays.keys() for lay in got.layers] == [lay.arrays.keys() for lay in expect.layers]
    for a, b in zip(got.layers, expect.layers, strict=True):
        for k in a.arrays:
            assert_array_equal(a.arrays[k], b.arrays[k])
    assert not np.array_equal(offset, v1.load_net().layers[0].arrays["offset"])


def test_when_no_register_change_holds_the_efficiency_a_network_is_trained(tmp_path, trained_run):
    """The live configuration's efficiency comes from a strong reference signal; the new
    conditions' signal is zero-bias-like, so no run-time change reaches 0.9 of it: every one is
    named with the reason, and the fine-tune (a new bitstream) goes live."""
    import dataclasses

    cfg = dataclasses.replace(CFG, runtime_first=True, max_old_tpr_loss=1.0)
    reg, _v1, learner = _learner(
        tmp_path,
        trained_run,
        cfg,
        reference_signal={"sig": signal_like(600, seed=22)},
    )
    learner.signal_holdout = {"weak": zero_bias_like(600, seed=23)}
    result = _adapt_on_drift(learner)
    assert result.path == "bitstream" and result.accepted, (result.why, result.reasons)
    kinds = [w.split(":")[0] for w in result.why]  # "scaling" is left out when equal to "offsets"
    assert kinds in (["thresholds", "offsets"], ["thresholds", "offsets", "scaling"]), kinds
    assert all("of the live configuration" in w for w in result.why)
    assert reg.get(result.version).provenance["kind"] == "fine_tune"


def test_a_trained_network_goes_live_with_its_menu_in_one_swap(tmp_path, trained_run):
    """With ``on_swap`` (the daemon's swap command) the accepted network and the thresholds
    calibrated for it are sent together, and neither set_model nor set_menu is used."""
    swaps, models, menus = [], [], []
    reg, _v1, learner = _learner(
        tmp_path,
        trained_run,
        CFG,
        on_swap=lambda *a: swaps.append(a),
        on_model=lambda *a: models.append(a),
        on_menu=menus.append,
    )
    result = _adapt_on_drift(learner)
    assert result.accepted and result.path == "bitstream"
    assert models == [] and menus == []
    assert swaps == [("ad", reg.get(result.version).qnet_path, learner.menu)]
    assert learner.menu.to_json() == reg.get(result.version).menu()
