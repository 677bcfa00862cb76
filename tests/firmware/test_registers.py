"""The run-time register bank: map and encodings in Python, the mid-stream switch on the RTL."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from l1forge.errors import ConfigError
from l1forge.firmware import packing, registers
from l1forge.firmware.build import BuildOptions, build
from l1forge.firmware.sim import read_stats, run_bench
from l1forge.firmware.vectors import bench_vectors
from l1forge.models.build import NetBuilder
from l1forge.models.emulator import Emulator
from l1forge.models.fixed import Fixed
from l1forge.online.datapath.menu import Menu, Seed

LATENCY = 3
SEEDS = 4
BEAT_BITS = 32


def scaled_net(n_in: int = 8, seed: int = 7):
    """The exporter's encoder shape, small: scale (TRN/WRAP) -> quantize ap_fixed<14,8>
    (RND_CONV/SAT) -> dense/relu -> mu -> sum of squares; outputs (score, mu)."""
    rng = np.random.default_rng(seed)
    b = NetBuilder("reg_enc", n_in, Fixed(True, 16, 16))
    b.scale("scale", rng.integers(-64, 64, n_in), Fixed(True, 7, 7), rng.integers(0, 7, n_in))
    b.quantize("x_q", Fixed(True, 14, 8), "RND_CONV", "SAT")
    w = Fixed(True, 8, 1)
    b.dense("dense0", rng.integers(-128, 128, (n_in, 6)), w, rng.integers(-128, 128, 6), w)
    b.relu("relu0", Fixed(False, 8, 4), "RND_CONV", "SAT")
    b.dense("mu_dense", rng.integers(-128, 128, (6, 3)), w, rng.integers(-128, 128, 3), w)
    b.quantize("mu", Fixed(True, 12, 6), "RND_CONV", "SAT")
    b.sum_squares("score")
    return b.build(outputs=("score", "mu"))


@pytest.fixture(scope="module")
def reg_net():
    return scaled_net()


@pytest.fixture(scope="module")
def reg_fw(reg_net, tmp_path_factory):
    out = tmp_path_factory.mktemp("fw_regs")
    opts = BuildOptions(
        latency_cycles=LATENCY, beat_bits=BEAT_BITS, hls=False, registers=True, seeds=SEEDS
    )
    build(reg_net, out, opts)
    return out


@pytest.fixture(scope="module")
def reg_sims(reg_fw, tmp_path_factory):
    """Simulator builds of the register firmware, compiled once per simulator."""
    from l1forge.firmware.sim import build_sim

    cache = {}

    def get(simulator: str):
        if simulator not in cache:
            bdir = tmp_path_factory.mktemp(f"build_regs_{simulator}")
            cache[simulator] = build_sim(reg_fw, simulator, "trigger", bdir)
        return cache[simulator]

    return get


def _rmap(fw) -> registers.RegisterMap:
    return registers.RegisterMap.from_json(packing.load(fw / "packing.json").registers)


# ---- Python side ----------------------------------------------------------------------


def test_map_in_packing_json(reg_fw, reg_net):
    spec = packing.load(reg_fw / "packing.json")
    rmap = _rmap(reg_fw)
    assert rmap.to_json() == spec.registers  # round trip
    assert spec.n_seed_bits == SEEDS and spec.n_net_outputs == 4
    assert spec.output.slots[-1].tensor == packing.SEED_SLOT
    assert rmap.score_field == "score[0]" and rmap.scale_layers == ("scale", "x_q")
    assert rmap.latency_cycles == LATENCY
    off, sh = rmap.reg("OFFSET"), rmap.reg("SHIFT")
    assert (off.lo, off.hi, off.width) == (-64, 63, 7)  # the IR's offset format
    assert (sh.lo, sh.hi) == (0, 6)  # 0 .. the scale output's frac_bits
    assert list(off.reset) == reg_net.layers[0].arrays["offset"].tolist()
    thr = rmap.reg("THRESHOLD")
    assert (thr.lo, thr.hi, thr.frac_bits) == (-1, 2**24 - 1, 12)
    manifest = json.loads((reg_fw / "manifest.json").read_text())
    assert manifest["registers"]["enabled"] and manifest["modules"]["regbank"] == "reg_enc_regbank"


def test_threshold_encoding_equals_the_menu(reg_fw):
    """score_int > T equals the menu's real-valued score > t for every score on the grid."""
    rmap = _rmap(reg_fw)
    lsb = 2.0**-rmap.score.frac_bits
    scores = np.array([0, 1, 2, 4095, 4096, 4097, 2**24 - 2, 2**24 - 1], dtype=np.int64)
    ts = [-1.0, -lsb / 2, 0.0, lsb / 3, lsb, 0.999, 1.0, 1.0 + lsb / 2, 4095.99, 4096.0, math.inf]
    for t in ts:
        menu = Menu((Seed("s", "ad", threshold=t),))
        want = menu.decide({"ad": scores * lsb}, np.arange(len(scores)))
        got = rmap.seed_bits(scores, rmap.threshold_ints([t]))[:, 0]
        np.testing.assert_array_equal(got, want.astype(np.int64), err_msg=f"threshold {t}")
    assert rmap.threshold_ints([]) == [2**24 - 1] * SEEDS  # unused slots never fire
    menu = Menu(tuple(Seed(f"AD{i}", "ad", threshold=float(i)) for i in range(3)))
    t, slots = rmap.menu_thresholds(menu, "ad")
    assert t == [0.0, 1.0, 2.0] and slots == {"AD0": 0, "AD1": 1, "AD2": 2}


def test_out_of_range_values_are_refused_in_python(reg_fw):
    rmap = _rmap(reg_fw)
    with pytest.raises(registers.RegisterError, match=r"OFFSET: 64 outside -64\.\.63"):
        rmap.scale_writes([64] + [0] * 7, [0] * 8)
    with pytest.raises(registers.RegisterError, match="SHIFT"):
        rmap.scale_writes([0] * 8, [7] + [0] * 7)
    with pytest.raises(registers.RegisterError, match="read-only"):
        rmap.word("VERSION", 1)
    with pytest.raises(registers.RegisterError, match="8 features"):
        rmap.scale_writes([0] * 7, [0] * 7)
    assert isinstance(registers.RegisterError("x"), ConfigError)


def test_without_registers_the_build_is_unchanged(tmp_path, reg_net):
    """A build without --registers writes no bank, no seed bits and no map."""
    build(reg_net, tmp_path, BuildOptions(latency_cycles=2, beat_bits=BEAT_BITS, hls=False))
    spec = packing.load(tmp_path / "packing.json")
    assert spec.registers is None and spec.n_seed_bits == 0
    assert not (tmp_path / "rtl" / "reg_enc_regbank.v").exists()
    assert "axil" not in (tmp_path / "rtl" / "reg_enc_axis.v").read_text()


# ---- RTL: the switch in mid-stream ----------------------------------------------------


def _expected(net, x, rmap, thresholds, spec):
    """Packed outputs (network outputs, then the seed bits) of ``net`` under ``thresholds``."""
    with Emulator(net) as emu:
        y = emu.run(x)
    bits = rmap.seed_bits(y[:, 0], rmap.threshold_ints(thresholds))
    packed = packing.pack(np.concatenate([y, bits], axis=1), spec.output, spec.output.bytes_for(32))
    return packed, y


def _plan(reg_net, reg_fw, n_random, tmp_path):
    rmap = _rmap(reg_fw)
    spec = packing.load(reg_fw / "packing.json")
    x = bench_vectors(reg_net, n_random, seed=17)
    rng = np.random.default_rng(5)
    off, sh = rmap.reg("OFFSET"), rmap.reg("SHIFT")
    new_off = rng.integers(off.lo, off.hi + 1, off.count)
    new_off[:2] = (off.lo, off.hi)  # the extremes of the offset format
    new_sh = rng.integers(sh.lo, sh.hi + 1, sh.count)
    new_sh[:2] = (sh.hi, sh.lo)
    new_net = registers.with_scaling(reg_net, new_off, new_sh)
    with Emulator(reg_net) as emu:
        scores = emu.run(x)[:, 0] * 2.0**-rmap.score.frac_bits
    old_t = [float(np.quantile(scores, q)) for q in (0.5, 0.8, 0.95)] + [math.inf]
    # seed 3 goes from never to always: its bit tells the threshold sets apart on every event
    new_t = [float(np.quantile(scores, q)) for q in (0.3, 0.6, 0.9)] + [-math.inf]
    exp_old, y_old = _expected(reg_net, x, rmap, old_t, spec)
    exp_new, y_new = _expected(new_net, x, rmap, new_t, spec)
    t_reg, o_reg, s_reg = (rmap.reg(k) for k in ("THRESHOLD", "OFFSET", "SHIFT"))
    bad = [
        [o_reg.addr(0), o_reg.hi + 1, 4],
        [o_reg.addr(1), o_reg.lo - 1, 4],
        [s_reg.addr(0), s_reg.hi + 1, 4],
        [s_reg.addr(2), s_reg.lo - 1, 4],
        [t_reg.addr(0), t_reg.hi + 1, 4],
        [t_reg.addr(1), t_reg.lo - 1, 4],
        [rmap.reg("VERSION").address, 7, 4],  # read-only
        [rmap.reg("COMMIT").address, 2, 4],  # COMMIT takes 1 only
        [0x300, 1, 4],  # unmapped
        [o_reg.addr(3), 1, 2],  # partial (WSTRB 0x3)
    ]
    plan = {
        "old": [*rmap.threshold_writes(old_t), rmap.commit_write()],
        "new": [*rmap.threshold_writes(new_t), *rmap.scale_writes(new_off, new_sh)],
        "bad": bad,
        "switch_at": len(x) // 5,
    }
    vec = _write_bench_inputs(tmp_path, plan, x, spec, exp_old, exp_new)
    return vec, exp_old, np.any(y_old != y_new, axis=1)


def _write_bench_inputs(tmp_path, plan, x, spec, exp_old, exp_new) -> Path:
    """The plan and the vectors bench_registers reads (plan.json, v.npz); the npz path."""
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    vec = tmp_path / "v.npz"
    np.savez(
        vec,
        in_bytes=packing.pack(x, spec.input, spec.input.bytes_for(32)),
        expected_old=exp_old,
        expected_new=exp_new,
        out_bytes=exp_old.shape[1],
    )
    return vec


def _run_switch_bench(sim, fw, vec, tmp_path) -> dict:
    """Run bench_registers on ``sim`` with the vectors and the plan ``_plan`` wrote; its stats."""
    env = {
        "L1F_FIRMWARE": str(fw),
        "L1F_VECTORS": str(vec),
        "L1F_PLAN": str(tmp_path / "plan.json"),
        "L1F_STATS": str(tmp_path / "stats.json"),
    }
    run_bench(sim, "l1forge.firmware.bench_registers", env, tmp_path)
    return read_stats(tmp_path)


@pytest.mark.rtl
@pytest.mark.parametrize(("simulator", "n_random"), [("icarus", 1500), ("verilator", 5000)])
def test_switch_in_mid_stream(simulator, n_random, reg_net, reg_fw, reg_sims, tmp_path):
    vec, exp_old, differ = _plan(reg_net, reg_fw, n_random, tmp_path)
    assert differ.mean() > 0.5  # the new scaling changes the network's outputs on most events
    stats = _run_switch_bench(reg_sims(simulator), reg_fw, vec, tmp_path)
    n = len(exp_old)
    assert stats["events_in"] == stats["events_out"] == n
    assert stats["mismatches"] == stats["lost_or_duplicated"] == stats["timing_errors"] == 0
    assert stats["events_old_set"] > n // 10 and stats["events_new_set"] > n // 2
    assert stats["refused"] == stats["bad_writes"] == 10
    assert stats["version_after_commit"] == stats["version_after_refused"] == 2
    # the scaling switch is pinned down by events around the boundary whose outputs differ
    # (seed 3 pins the threshold switch on every event)
    k = stats["first_new_event"]
    assert differ[k - 3 : k].any() and differ[k : k + 3].any()


@pytest.mark.rtl
def test_rtl_backend_programs_the_bank(reg_net, reg_fw, reg_sims):
    """The RTL backend writes through the same map over a simulated AXI4-Lite bus."""
    from l1forge.firmware.rtl_backend import RtlSimBackend

    rmap = _rmap(reg_fw)
    x = bench_vectors(reg_net, 300, seed=23)
    backend = RtlSimBackend(reg_fw, "verilator", sim=reg_sims("verilator"))
    try:
        with Emulator(reg_net) as emu:
            np.testing.assert_array_equal(backend.infer(x), emu.run(x))
        assert not backend.last_seed_bits.any()  # reset thresholds never fire
        rng = np.random.default_rng(2)
        off = rng.integers(-64, 64, 8)
        sh = rng.integers(0, 7, 8)
        t = [0.5, 2.0, 8.0, -math.inf]
        backend.registers.set_thresholds(t)
        backend.registers.set_scaling(off, sh)
        assert backend.registers.version == 2
        assert backend.registers.read("OFFSET", 3) == off[3]
        with Emulator(registers.with_scaling(reg_net, off, sh)) as emu:
            want = emu.run(x)
        np.testing.assert_array_equal(backend.infer(x), want)
        bits = rmap.seed_bits(want[:, 0], rmap.threshold_ints(t))
        np.testing.assert_array_equal(backend.last_seed_bits, bits)
        assert bits[:, :3].any() and not bits[:, :3].all() and bits[:, 3].all()
    finally:
        backend.close()


@pytest.mark.rtl
def test_patterns_of_a_register_build_describe_the_bank_after_reset(
    reg_net, reg_fw, reg_sims, tmp_path
):
    """``patterns write`` on a register build: expected = the emulator's outputs and every seed
    bit 0 (the bank just after reset); replayed on Icarus with no register writes, it matches."""
    from l1forge.firmware import patterns
    from l1forge.models import qnet

    spec = packing.load(reg_fw / "packing.json")
    x = bench_vectors(reg_net, 200, seed=41)
    ir = qnet.save(reg_net, tmp_path / "reg.qnet.json")
    paths = patterns.write_patterns(ir, x, tmp_path / "pat", spec, source="bench_vectors seed 41")
    with Emulator(reg_net) as emu:
        y = emu.run(x)
    zeros = np.zeros((len(x), SEEDS), dtype=y.dtype)
    exp = patterns.read_pattern(paths["expected"], "output")
    assert exp.valid_words() == patterns.words_of(np.concatenate([y, zeros], 1), spec.output)
    captured = tmp_path / "captured.pattern"
    env = {
        "L1F_PATTERN_IN": str(paths["input"]),
        "L1F_PATTERN_OUT": str(captured),
        "L1F_LATENCY": str(LATENCY),
    }
    run_bench(reg_sims("icarus"), "l1forge.firmware.bench_pattern", env, tmp_path)
    assert patterns.compare_expected(captured, paths["expected"]).ok
    assert patterns.compare_emulator(captured, paths["input"], ir).ok


class _Mmio:
    """A PYNQ MMIO stand-in: records writes, answers reads with the last word written."""

    def __init__(self) -> None:
        self.log: list[tuple[int, int]] = []
        self.mem: dict[int, int] = {}

    def write(self, offset: int, value: int) -> None:
        self.log.append((offset, value))
        self.mem[offset] = value

    def read(self, offset: int) -> int:
        return self.mem.get(offset, 0)


def test_pynq_driver_writes_through_the_map(reg_fw):
    from types import SimpleNamespace

    from l1forge.firmware.pynq_driver import PynqBackend

    mmio = _Mmio()
    overlay = SimpleNamespace(axi_dma_0=object(), l1forge_regs=mmio)
    drv = PynqBackend(reg_fw, overlay=overlay, allocate=lambda shape, dtype: np.zeros(shape, dtype))
    rmap = _rmap(reg_fw)
    drv.registers.set_thresholds([1.0, 2.0])
    drv.registers.set_scaling(list(range(8)), [1] * 8)
    assert mmio.log == [
        *rmap.threshold_writes([1.0, 2.0]),
        rmap.commit_write(),
        *rmap.scale_writes(list(range(8)), [1] * 8),
        rmap.commit_write(),
    ]
    assert drv.registers.read("OFFSET", 7) == 7 and drv.n_outputs == 4
    with pytest.raises(registers.RegisterError):
        drv.registers.set_scaling([99] * 8, [0] * 8)


@pytest.mark.rtl
@pytest.mark.parametrize("src_signed", [True, False])
def test_requantize_verilog_every_mode(src_signed, tmp_path):
    """The scaling stage's re-quantization equals models.fixed.requantize for every rounding
    and overflow mode, on every 8-bit source value (Icarus)."""
    import subprocess

    from l1forge.firmware.regbank import requantize_verilog
    from l1forge.models.fixed import OVERFLOW_MODES, ROUNDING_MODES, requantize

    src_frac = 4
    dsts = [Fixed(True, 4, 2), Fixed(False, 3, 1), Fixed(True, 6, 1), Fixed(True, 12, 7)]
    cases, body = [], []
    for r in ROUNDING_MODES:
        for o in OVERFLOW_MODES:
            for dst in dsts:
                p = f"c{len(cases)}"
                lines, y = requantize_verilog(p, "a", 8, src_frac, src_signed, dst, r, o)
                body += [f"    {ln}" for ln in lines]
                body.append(f"    always @(*) out[{len(cases)}] = {{{32 - dst.width}'d0, {y}}};")
                cases.append((r, o, dst))
    n = len(cases)
    tb = "\n".join(
        [
            "module tb;",
            "    reg [7:0] a;",
            f"    reg [31:0] out [0:{n - 1}];",
            *body,
            "    integer v, c;",
            "    initial begin",
            "        for (v = 0; v < 256; v = v + 1) begin",
            "            a = v; #1;",
            f'            for (c = 0; c < {n}; c = c + 1) $display("%0d %0d %0d", v, c, out[c]);',
            "        end",
            "        $finish;",
            "    end",
            "endmodule",
        ]
    )
    (tmp_path / "tb.v").write_text(tb)
    subprocess.run(
        ["iverilog", "-g2005", "-o", "tb.vvp", "tb.v"], cwd=tmp_path, check=True, timeout=300
    )
    res = subprocess.run(
        ["vvp", "-n", "tb.vvp"], cwd=tmp_path, check=True, capture_output=True, text=True
    )
    got = np.zeros((256, n), dtype=np.int64)
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            got[int(parts[0]), int(parts[1])] = int(parts[2])
    codes = np.arange(256)
    src = np.where(codes >= 128, codes - 256, codes) if src_signed else codes
    for c, (r, o, dst) in enumerate(cases):
        want = requantize(src.astype(np.float64), src_frac, dst, r, o).astype(np.int64)
        raw = np.where(want < 0, want + (1 << dst.width), want)
        np.testing.assert_array_equal(got[:, c], raw, err_msg=f"{r} {o} {dst.hls_type()}")


@pytest.mark.rtl
def test_thresholds_only_switch_at_one_cycle_latency(tmp_path):
    """A network without a scale op: thresholds only, a one-cycle trigger (Icarus)."""
    from l1forge.firmware.sim import build_sim
    from l1forge.models.build import random_mlp

    net = random_mlp(6, (4,), 2, score=True, seed=3, name="tiny_thr")
    net = dataclasses.replace(net, outputs=("score", "mu"))
    fw = tmp_path / "fw"
    opts = BuildOptions(latency_cycles=1, beat_bits=BEAT_BITS, hls=False, registers=True, seeds=2)
    build(net, fw, opts)
    rmap = _rmap(fw)
    assert not rmap.has_scaling and rmap.latency_cycles == 1
    spec = packing.load(fw / "packing.json")
    x = bench_vectors(net, 600, seed=3)
    with Emulator(net) as emu:
        scores = emu.run(x)[:, 0] * 2.0**-rmap.score.frac_bits
    old_t = [float(np.quantile(scores, 0.5)), math.inf]
    new_t = [float(np.quantile(scores, 0.2)), -math.inf]
    plan = {
        "old": [*rmap.threshold_writes(old_t), rmap.commit_write()],
        "new": rmap.threshold_writes(new_t),
        "bad": [[rmap.reg("THRESHOLD").addr(0), rmap.reg("THRESHOLD").hi + 1, 4]],
        "switch_at": 200,
    }
    exp_old, _ = _expected(net, x, rmap, old_t, spec)
    exp_new, _ = _expected(net, x, rmap, new_t, spec)
    vec = _write_bench_inputs(tmp_path, plan, x, spec, exp_old, exp_new)
    sim = build_sim(fw, "icarus", "trigger", tmp_path / "build")
    stats = _run_switch_bench(sim, fw, vec, tmp_path)
    assert stats["events_out"] == len(x) and stats["mismatches"] == 0
    assert stats["events_old_set"] > 200 and stats["events_new_set"] > 200
    assert stats["refused"] == 1
