"""Run-time thresholds and input scaling through a worker: the emulator's ``with_scaling``, and a
register bank written through its map (a PYNQ board whose MMIO and DMA are mocked here: no
board exists on this machine; ``test_rtl_tuning.py`` runs the same path on the real RTL)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from l1forge.errors import ConfigError
from l1forge.firmware import packing, registers
from l1forge.firmware.vectors import bench_vectors
from l1forge.models.build import random_mlp
from l1forge.online.datapath import worker as worker_mod
from l1forge.online.datapath.backends import outputs_float
from l1forge.online.datapath.menu import Menu, Seed
from l1forge.online.datapath.protocol import InputScaling, ModelFiles, WorkerSetup
from l1forge.online.datapath.tuning import check_scaling
from l1forge.online.datapath.wire import EventBatch, encode_batch
from l1forge.sim.l1objects import ETA_MAX_HW, ETA_MIN_HW, PHI_MAX_HW, PHI_MIN_HW, PT_MAX_HW

from .runs import emulate, new_scaling


def events(net, n: int, seed: int) -> np.ndarray:
    """Corner and random inputs of ``net`` clipped to the L1 objects' hardware ranges
    (pT, eta, phi per object), as (N, 57) int16."""
    x = bench_vectors(net, n, seed=seed).reshape(-1, 19, 3)
    lo = np.array([0, ETA_MIN_HW, PHI_MIN_HW])
    hi = np.array([PT_MAX_HW, ETA_MAX_HW, PHI_MAX_HW])
    return np.clip(x, lo, hi).reshape(-1, 57).astype(np.int16)


def batch_frames(x: np.ndarray, first_seq: int) -> list:
    n = len(x)
    b = EventBatch(1, first_seq, 0, np.arange(n, dtype=np.uint64), x.reshape(n, 19, 3))
    return [bytes(f) for f in encode_batch(b)]


def ad_menu(scores: np.ndarray, fractions=(0.5, 0.8, 0.95)) -> Menu:
    """AD seeds at score quantiles (so each fires on part of the events) and a zero-bias seed."""
    seeds = [
        Seed(f"AD{i}", "ad", threshold=float(np.quantile(scores, f)))
        for i, f in enumerate(fractions)
    ]
    seeds.append(Seed("AD_pre", "ad", threshold=float(np.quantile(scores, 0.3)), prescale=3))
    return Menu((*seeds, Seed("ZeroBias", "", prescale=7)))


def configured_worker(
    tmp_path, ir_path, backend: dict, menu: Menu, scaling: tuple = ()
) -> worker_mod.TriggerWorker:
    models = (ModelFiles.read("ad", ir_path),)
    setup = WorkerSetup(1, backend, models, json.dumps(menu.to_json()), scaling)
    frames = setup.frames()
    w = worker_mod.TriggerWorker("test-0", tmp_path)
    w.configure(json.loads(frames[1]), frames[2:])
    return w


def score(net, x) -> np.ndarray:
    return outputs_float(net, emulate(net, x))[:, 0]


# ---- the emulator backend -----------------------------------------------------------


def test_check_scaling_refuses_values_outside_the_registers(scaled_ad_net):
    off, sh = new_scaling(scaled_ad_net)
    check_scaling(scaled_ad_net, off, sh)
    with pytest.raises(registers.RegisterError, match=r"OFFSET\[3\]: 64 outside -64\.\.63"):
        check_scaling(scaled_ad_net, [*off[:3], 64, *off[4:]], sh)
    sc, _ = registers.split_scaling(scaled_ad_net)
    with pytest.raises(registers.RegisterError, match=rf"SHIFT\[0\]: {sc.shift_hi + 1} outside"):
        check_scaling(scaled_ad_net, off, [sc.shift_hi + 1, *sh[1:]])
    with pytest.raises(registers.RegisterError, match="56 values for 57 features"):
        check_scaling(scaled_ad_net, off[:-1], sh)
    with pytest.raises(registers.RegisterError, match="does not start with a scale op"):
        check_scaling(random_mlp(score=True), off, sh)
    with pytest.raises(ConfigError, match="list of integers"):
        InputScaling("ad", [1.5] * 57, sh)


def test_emulator_worker_scales_like_with_scaling_and_keeps_the_old_on_refusal(
    tmp_path, scaled_ad_net, scaled_ad_ir
):
    x = events(scaled_ad_net, 600, seed=5)
    menu = ad_menu(score(scaled_ad_net, x))
    w = configured_worker(tmp_path, scaled_ad_ir, {"kind": "emulator"}, menu)
    try:
        seqs = np.arange(len(x), dtype=np.uint64) + np.uint64(1000)
        r = w.process(batch_frames(x, 1000))
        np.testing.assert_array_equal(r.scores[:, 0], score(scaled_ad_net, x))
        np.testing.assert_array_equal(r.seed_bits, menu.decide({"ad": r.scores[:, 0]}, seqs))
        assert w.firmware == {} and w.firmware_status() == {}  # no register bank

        off, sh = new_scaling(scaled_ad_net)
        answer = w.set_scaling(InputScaling("ad", off, sh))
        assert answer == {
            "model": "ad",
            "backend": "emulator",
            "offset": off,
            "shift": sh,
            "registers_version": None,
        }
        new_net = registers.with_scaling(scaled_ad_net, off, sh)
        want = score(new_net, x)
        assert np.mean(want != score(scaled_ad_net, x)) > 0.3  # the scaling matters
        r = w.process(batch_frames(x, 1000))
        np.testing.assert_array_equal(r.scores[:, 0], want)

        bad = list(off)
        bad[5] = 200
        with pytest.raises(registers.RegisterError, match=r"OFFSET\[5\]: 200"):
            w.set_scaling(InputScaling("ad", bad, sh))
        with pytest.raises(ConfigError, match="no model 'cls'"):
            w.set_scaling(InputScaling("cls", off, sh))
        r = w.process(batch_frames(x, 1000))
        np.testing.assert_array_equal(r.scores[:, 0], want)  # the accepted scaling stays
    finally:
        w.close()


# ---- a register bank on a mocked PYNQ board -----------------------------------------


class MockBank:
    """The register bank's MMIO as a board answers it (mocked: no board here): writes land in a
    shadow set, COMMIT copies it to the active set and counts VERSION, reads return the shadow."""

    def __init__(self, rmap: registers.RegisterMap):
        self.map = rmap
        self.log: list[tuple[int, int]] = []
        self.shadow = {
            r.addr(i): r.reset[i] & 0xFFFFFFFF
            for r in rmap.registers
            for i in range(r.count)
            if r.access == "rw"
        }
        self.active = dict(self.shadow)
        self.version = 0

    def write(self, offset: int, value: int) -> None:
        self.log.append((offset, value))
        if (offset, value) == self.map.commit_write():
            self.active = dict(self.shadow)
            self.version += 1
        else:
            self.shadow[offset] = value

    def read(self, offset: int) -> int:
        if offset == self.map.reg("VERSION").address:
            return self.version
        return self.shadow.get(offset, 0)

    def active_ints(self, name: str) -> list[int]:
        r = self.map.reg(name)
        return [self.map.decode(name, self.active[r.addr(i)]) for i in range(r.count)]


class MockDma:
    """AXI DMA channels whose "firmware" is the emulator of ``net`` with the bank's active
    scaling and the comparators of ``RegisterMap.seed_bits`` (mocked board; ``flip`` inverts
    one seed bit of every event, a stuck comparator)."""

    def __init__(self, net, spec: packing.PackingSpec, bank: MockBank):
        self.net, self.spec, self.bank = net, spec, bank
        self.flip: int | None = None
        self._out = None
        self.sendchannel = SimpleNamespace(transfer=self._send, wait=lambda: None)
        self.recvchannel = SimpleNamespace(transfer=self._recv, wait=lambda: None)

    def _recv(self, buf, start: int, nbytes: int) -> None:
        self._out = (buf, nbytes)

    def _send(self, buf, start: int, nbytes: int) -> None:
        in_bytes = self.spec.input.bytes_for(self.spec.beat_bits)
        raw = np.asarray(buf[:nbytes], dtype=np.uint8).reshape(-1, in_bytes)
        x = packing.unpack(raw, self.spec.input)
        rmap = self.bank.map
        net = registers.with_scaling(
            self.net, self.bank.active_ints("OFFSET"), self.bank.active_ints("SHIFT")
        )
        y = emulate(net, x)
        bits = rmap.seed_bits(y[:, 0], self.bank.active_ints("THRESHOLD"))
        if self.flip is not None:
            bits[:, self.flip] ^= 1
        out_bytes = self.spec.output.bytes_for(self.spec.beat_bits)
        words = packing.pack(np.concatenate([y, bits], axis=1), self.spec.output, out_bytes)
        out, n_out = self._out
        assert n_out == words.size
        out[:n_out] = words.reshape(-1)


@pytest.fixture
def mocked_board(monkeypatch, scaled_ad_net, scaled_ad_fw):
    """The worker's pynq backend made on a mocked overlay (MockBank + MockDma)."""
    from l1forge.firmware.pynq_driver import PynqBackend

    spec = packing.load(scaled_ad_fw / "packing.json")
    bank = MockBank(registers.RegisterMap.from_json(spec.registers))
    dma = MockDma(scaled_ad_net, spec, bank)
    real = worker_mod.make_backend

    def make(kind, **kw):
        if kind != "pynq":
            return real(kind, **kw)
        overlay = SimpleNamespace(axi_dma_0=dma, l1forge_regs=bank)
        return PynqBackend(
            kw["firmware_dir"],
            overlay=overlay,
            allocate=lambda shape, dtype: np.zeros(shape, dtype),
        )

    monkeypatch.setattr(worker_mod, "make_backend", make)
    return SimpleNamespace(bank=bank, dma=dma, fw=scaled_ad_fw)


def test_pynq_worker_programs_the_bank_through_the_map_and_uses_its_seed_bits(
    tmp_path, scaled_ad_net, scaled_ad_ir, mocked_board
):
    """Mocked board: the MMIO writes of the daemon's set_menu / set_scaling path are exactly
    the RegisterMap's, and the worker's AD seeds are the firmware's seed bits."""
    bank, rmap = mocked_board.bank, mocked_board.bank.map
    x = events(scaled_ad_net, 500, seed=9)
    menu = ad_menu(score(scaled_ad_net, x))
    backend = {"kind": "pynq", "firmware_dir": str(mocked_board.fw), "bitfile": "top.bit"}
    w = configured_worker(tmp_path, scaled_ad_ir, backend, menu)
    try:
        thresholds, slots = rmap.menu_thresholds(menu, "ad")
        assert slots == {"AD0": 0, "AD1": 1, "AD2": 2, "AD_pre": 3}
        assert bank.log == [*rmap.threshold_writes(thresholds), rmap.commit_write()]
        seqs = np.arange(len(x), dtype=np.uint64) + np.uint64(64)
        r = w.process(batch_frames(x, 64))
        np.testing.assert_array_equal(r.scores[:, 0], score(scaled_ad_net, x))
        np.testing.assert_array_equal(r.seed_bits, menu.decide({"ad": r.scores[:, 0]}, seqs))
        st = w.firmware_status()["ad"]
        assert st["registers_version"] == 1 and st["events_compared"] == len(x)
        assert st["seed_mismatches"] == dict.fromkeys(slots, 0)
        assert st["thresholds"] == rmap.threshold_ints(thresholds)

        # a new menu: its thresholds are written and committed before the next batch
        doc = menu.to_json()
        doc["seeds"][0]["threshold"] = 1e9
        doc["seeds"][1]["threshold"] = -5.0  # always fires
        new_menu = Menu.from_json(doc)
        bank.log.clear()
        w.set_menu(json.dumps(doc))
        t2, _ = rmap.menu_thresholds(new_menu, "ad")
        assert bank.log == [*rmap.threshold_writes(t2), rmap.commit_write()]
        r = w.process(batch_frames(x, 64))
        np.testing.assert_array_equal(r.seed_bits, new_menu.decide({"ad": r.scores[:, 0]}, seqs))
        assert not np.any(r.seed_bits & 1) and np.all(r.seed_bits & 2)

        # more AD seeds than threshold registers: refused, nothing written, old menu kept
        five = Menu(tuple(Seed(f"S{i}", "ad", threshold=float(i)) for i in range(5)))
        bank.log.clear()
        with pytest.raises(registers.RegisterError, match="5 seeds on 'ad', the firmware 4"):
            w.set_menu(json.dumps(five.to_json()))
        assert bank.log == [] and w.menu == new_menu

        # set_scaling: OFFSET/SHIFT writes + COMMIT; the outputs follow with_scaling
        off, sh = new_scaling(scaled_ad_net, seed=4)
        answer = w.set_scaling(InputScaling("ad", off, sh))
        assert bank.log == [*rmap.scale_writes(off, sh), rmap.commit_write()]
        assert answer == {
            "model": "ad",
            "backend": "pynq",
            "offset": off,
            "shift": sh,
            "registers_version": 3,
        }
        bank.log.clear()
        with pytest.raises(registers.RegisterError, match=r"register SHIFT: -1 outside"):
            w.set_scaling(InputScaling("ad", off, [-1, *sh[1:]]))
        assert bank.log == []  # refused before any write: the committed scaling stays
        r = w.process(batch_frames(x, 64))
        new_net = registers.with_scaling(scaled_ad_net, off, sh)
        np.testing.assert_array_equal(r.scores[:, 0], score(new_net, x))
        np.testing.assert_array_equal(r.seed_bits, new_menu.decide({"ad": r.scores[:, 0]}, seqs))

        # a stuck comparator on slot 2 (AD2): the firmware's bit is used, the mismatch counted
        mocked_board.dma.flip = 2
        before = w.firmware_status()["ad"]["seed_mismatches"]
        r = w.process(batch_frames(x, 64))
        soft = new_menu.decide({"ad": r.scores[:, 0]}, seqs)
        np.testing.assert_array_equal(r.seed_bits ^ soft, np.full(len(x), 4, dtype=np.uint32))
        after = w.firmware_status()["ad"]["seed_mismatches"]
        assert after["AD2"] - before["AD2"] == len(x)
        assert {k: after[k] - before[k] for k in after if k != "AD2"} == dict.fromkeys(
            ["AD0", "AD1", "AD_pre"], 0
        )
        assert w.new_mismatches == len(x)  # reported to the dispatcher with the next result
    finally:
        w.close()


# ---- a running pipeline on the emulator backend -------------------------------------


def test_set_scaling_mid_run_switches_once_at_a_batch_boundary(
    tmp_path, run_cfg, scaled_ad_net, scaled_ad_ir, running_pipeline
):
    """set_scaling on a running replay: read back from the ROOT files, every event's score is
    the old network's before one batch boundary and ``with_scaling``'s from it on."""
    import uproot

    from l1forge.online.datapath.storage import TREE

    from .runs import BATCH, TapBatches, assert_one_switch_at_a_batch_boundary, wait_for

    cfg = run_cfg(
        backend={"kind": "emulator", "models": {"ad": str(scaled_ad_ir)}},
        menu={
            "seeds": [
                {"name": "AD", "model": "ad", "threshold": 1.0},
                {"name": "ZeroBias", "model": ""},
            ]
        },  # every event is stored
        source={"rate_hz": 6000.0, "n_events": None, "loop": True},
        workers={"n": 1, "credits": 2},
        monitor={"fraction": 1.0},  # every batch on the tap: the run's batch boundaries
        duration_s=60.0,
    )
    pipe = running_pipeline(cfg, 21, start=False)
    tap = TapBatches()
    pipe.start(tap_subscriber=tap)
    wait_for(lambda: pipe.status().get("events_processed", 0) >= 3 * BATCH, what="3 batches")
    off, sh = new_scaling(scaled_ad_net, seed=8)
    with pytest.raises(registers.RegisterError, match="OFFSET"):
        pipe.set_scaling([99] * 57, sh)  # refused by the pipeline before any worker sees it
    answer = pipe.set_scaling(off, sh)
    assert answer["model"] == "ad" and answer["offset"] == off and answer["shift"] == sh
    (ack,) = answer["workers"].values()
    assert ack["ok"] and ack["registers_version"] is None and ack["backend"] == "emulator"
    sent = pipe.status()["events_in"]
    wait_for(lambda: pipe.status()["events_processed"] >= sent + 3 * BATCH, what="new batches")
    summary = pipe.stop()
    assert (summary.lost, summary.duplicated) == (0, 0)
    assert summary.n_accepted == summary.n_processed == summary.n_events_in

    parts = []
    for f in sorted(pipe.run_dir.glob("run*_ls*.root")):
        with uproot.open(f) as rf:
            parts.append(rf[TREE].arrays(["seq", "objects_hw", "score_ad"], library="np"))
    seq = np.concatenate([p["seq"] for p in parts])
    order = np.argsort(seq)
    seq = seq[order]
    x = np.concatenate([np.stack(p["objects_hw"]).reshape(-1, 57) for p in parts])[order]
    got = np.concatenate([p["score_ad"] for p in parts])[order]
    np.testing.assert_array_equal(seq, np.arange(summary.n_events_in))
    old = score(scaled_ad_net, x)
    new = score(registers.with_scaling(scaled_ad_net, off, sh), x)
    batches = tap.close(summary.n_events_in)
    k = assert_one_switch_at_a_batch_boundary(seq, got == old, got == new, batches)
    assert np.all(got[seq < k] == old[seq < k]) and np.all(got[seq >= k] == new[seq >= k])
    assert 3 * BATCH <= k <= sent
    assert np.mean(old != new) > 0.3  # most events tell the two scalings apart


# ---- the dispatcher: scaling broadcast, setup of late workers, firmware status ----------


def test_dispatcher_broadcasts_scaling_keeps_it_for_late_workers_and_sums_mismatches(
    zmq_ctx, scaled_ad_ir
):
    import threading

    import zmq

    from l1forge.online.datapath import protocol as msg
    from l1forge.online.datapath.dispatcher import Dispatcher

    setup = WorkerSetup(1, {"kind": "emulator"}, (ModelFiles.read("ad", scaled_ad_ir),), "{}")
    d = Dispatcher(
        zmq_ctx,
        worker_endpoint="inproc://w-tuning",
        source_endpoint="inproc://s-tuning",
        collector_endpoint="inproc://c-tuning",
        setup=setup,
        credits=1,
        heartbeat_s=0.2,
        timeout_s=30.0,
    )
    loop = threading.Thread(target=d.run, daemon=True)
    loop.start()

    def recv(sock: zmq.Socket) -> list[bytes]:
        while True:  # the dispatcher's heartbeats are not what the test waits for
            frames = sock.recv_multipart()
            if frames[0] != msg.D_HEARTBEAT:
                return frames

    def fake_worker(name: str) -> tuple[zmq.Socket, dict]:
        sock = zmq_ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.connect("inproc://w-tuning")
        sock.send_multipart([msg.W_READY, json.dumps({"name": name, "credits": 1}).encode()])
        kind, head, *_ = recv(sock)
        assert kind == msg.D_CONFIG
        sock.send_multipart([msg.W_CONFIGURED, b'{"models": {}}'])
        return sock, json.loads(head)

    try:
        first, head = fake_worker("fw-0")
        assert head["scaling"] == []
        scaling = InputScaling("ad", [1] * 57, [2] * 57)
        answers: dict = {}
        t = threading.Thread(target=lambda: answers.update(d.broadcast_scaling(scaling, 10)))
        t.start()
        kind, frame = recv(first)
        assert kind == msg.D_SET_SCALING
        got = json.loads(frame)
        assert InputScaling.from_json(got) == scaling
        first.send_multipart([msg.W_ACK, json.dumps({"token": got["token"], "ok": True}).encode()])
        t.join(10)
        assert answers == {"fw-0": {"token": got["token"], "ok": True}}
        late, head = fake_worker("fw-1")  # connects after the change: its setup has it
        assert head["scaling"] == [scaling.to_json()]
        for sock, n in ((first, 3), (late, 4)):
            stats = {"ad": {"seed_mismatches": {"AD0": n, "AD1": 1}, "registers_version": 2}}
            sock.send_multipart([msg.W_STATS, json.dumps(stats).encode()])
        from .runs import wait_for

        wait_for(lambda: d.status()["seed_mismatches"] == 9, 10, "the stats of both workers")
        assert d.status()["firmware"]["fw-1"]["ad"]["registers_version"] == 2
    finally:
        d.request_stop()
        loop.join(10)


def test_a_worker_connecting_later_loads_the_scaling_of_the_setup(
    tmp_path, scaled_ad_net, scaled_ad_ir
):
    x = events(scaled_ad_net, 200, seed=3)
    off, sh = new_scaling(scaled_ad_net, seed=30)
    menu = ad_menu(score(scaled_ad_net, x))
    scaling = (InputScaling("ad", off, sh),)
    w = configured_worker(tmp_path, scaled_ad_ir, {"kind": "emulator"}, menu, scaling)
    try:
        r = w.process(batch_frames(x, 0))
        want = score(registers.with_scaling(scaled_ad_net, off, sh), x)
        np.testing.assert_array_equal(r.scores[:, 0], want)
        # set_model restores the new IR's own scaling
        w.set_model("ad", scaled_ad_ir.read_bytes(), scaled_ad_ir.with_suffix(".npz").read_bytes())
        r = w.process(batch_frames(x, 0))
        np.testing.assert_array_equal(r.scores[:, 0], score(scaled_ad_net, x))
    finally:
        w.close()


def test_run_control_refuses_a_menu_the_register_bank_cannot_hold(
    tmp_path, events_h5, scaled_ad_ir, scaled_ad_fw
):
    from l1forge.online.config import run_config_from_dict
    from l1forge.online.control.runcontrol import RunControl

    raw = {
        "source": {"kind": "replay", "path": str(events_h5), "n_events": 10},
        "backend": {
            "kind": "rtl",
            "firmware_dir": str(scaled_ad_fw),
            "simulator": "icarus",
            "models": {"ad": str(scaled_ad_ir)},
        },
        "menu": {"seeds": [{"name": "AD0", "model": "ad", "threshold": 1.0}]},
        "storage": {"out_dir": str(tmp_path / "out")},
        "state_dir": str(tmp_path / "state"),
    }
    rc = RunControl(tmp_path / "state")
    rc.configure(run_config_from_dict(raw, tmp_path))
    five = Menu(tuple(Seed(f"S{i}", "ad", threshold=float(i)) for i in range(5)))
    with pytest.raises(registers.RegisterError, match="5 seeds on 'ad', the firmware 4 slots"):
        rc.set_menu(five.to_json())
    assert [s.name for s in rc.config.menu.seeds] == ["AD0"]  # the old menu stays
    four = Menu(tuple(Seed(f"S{i}", "ad", threshold=float(i)) for i in range(4)))
    assert rc.set_menu(four.to_json())["seeds"][3]["name"] == "S3"


def test_a_new_board_backend_after_set_model_gets_the_menu_thresholds_again(
    tmp_path, scaled_ad_net, scaled_ad_ir, mocked_board
):
    """Mocked board: set_model builds the backend anew (a new overlay starts from reset), so
    the worker writes the running menu's thresholds into the bank again."""
    bank, rmap = mocked_board.bank, mocked_board.bank.map
    x = events(scaled_ad_net, 100, seed=2)
    menu = ad_menu(score(scaled_ad_net, x))
    backend = {"kind": "pynq", "firmware_dir": str(mocked_board.fw), "bitfile": "top.bit"}
    w = configured_worker(tmp_path, scaled_ad_ir, backend, menu)
    try:
        old = w.models[0].backend
        bank.log.clear()
        w.set_model("ad", scaled_ad_ir.read_bytes(), scaled_ad_ir.with_suffix(".npz").read_bytes())
        assert w.models[0].backend is not old
        thresholds, _ = rmap.menu_thresholds(menu, "ad")
        assert bank.log == [*rmap.threshold_writes(thresholds), rmap.commit_write()]
        assert w.firmware_status()["ad"]["registers_version"] == 2
        seqs = np.arange(len(x), dtype=np.uint64)
        r = w.process(batch_frames(x, 0))
        np.testing.assert_array_equal(r.seed_bits, menu.decide({"ad": r.scores[:, 0]}, seqs))
    finally:
        w.close()
