"""Every rounding x overflow mode the Verilog generator supports, simulated as Verilog.

One design holds one branch per (rounding, overflow) pair, all with the same weights and
formats: scale -> dense -> quantize -> relu -> sum of squares, every re-quantization in the
branch's modes. Each branch must equal the emulator exactly on both simulators, and on the RTL's
own outputs every two branches must differ somewhere, so a generator that ignored a mode fails.
SAT_ZERO has no alkaid equivalent and is refused (``test_verilog.py``).
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from l1forge.firmware import packing
from l1forge.firmware.build import BuildOptions, build
from l1forge.firmware.sim import read_stats, run_bench
from l1forge.firmware.vectors import bench_vectors
from l1forge.firmware.verilog import ALKAID_OVERFLOW, ALKAID_ROUNDING, COMPOSED_ROUNDING
from l1forge.models.emulator import Emulator
from l1forge.models.fixed import Fixed
from l1forge.models.qnet import Layer, QNet, TensorSpec

from .benches import (
    BEAT_BITS,
    assert_bench_fails_on_a_corrupted_expectation,
    trigger_env,
    write_vectors,
)

ROUNDINGS = (*ALKAID_ROUNDING, *COMPOSED_ROUNDING)
MODES = list(itertools.product(ROUNDINGS, ALKAID_OVERFLOW))
LATENCY = 1
# Icarus evaluates this 21-branch netlist at about 10-20 vectors/s (each changed input feature
# re-evaluates its whole fan-out cone), so it gets 500 random vectors; Verilator 3,000.
N_RANDOM = {"icarus": 500, "verilator": 3000}


def modes_net() -> QNet:
    """One branch per mode pair from the same 6-feature input; outputs q, r, ss of each."""
    rng = np.random.default_rng(2)
    x_fmt = Fixed(True, 8, 4)
    w = rng.integers(-8, 8, size=(6, 4))
    bias = rng.integers(-8, 8, size=4)
    offset = rng.integers(-20, 20, size=6)
    shift = np.array([1, 2, 0, 3, 1, 2])
    tensors = {"x": TensorSpec("x", 6, x_fmt)}
    layers, outputs = [], []

    def add(name, op, src, size, fmt, r, o, arrays=None, formats=None):
        tensors[name] = TensorSpec(name, size, fmt)
        layers.append(
            Layer(
                name=name,
                op=op,
                input=src,
                output=name,
                rounding=r,
                overflow=o,
                arrays=arrays or {},
                array_formats=formats or {},
            )
        )

    for r, o in MODES:
        tag = f"{r}_{o}".lower()
        add(f"sc_{tag}", "scale", "x", 6, Fixed(True, 7, 4), r, o,
            {"offset": offset, "shift": shift}, {"offset": Fixed(True, 8, 4)})  # fmt: skip
        add(f"d_{tag}", "dense", f"sc_{tag}", 4, Fixed(True, 13, 8), "TRN", "WRAP",
            {"weight": w, "bias": bias},
            {"weight": Fixed(True, 4, 2), "bias": Fixed(True, 4, 2)})  # fmt: skip
        add(f"q_{tag}", "quantize", f"d_{tag}", 4, Fixed(True, 7, 4), r, o)
        add(f"r_{tag}", "relu", f"q_{tag}", 4, Fixed(False, 5, 3), r, o)
        add(f"ss_{tag}", "sum_squares", f"r_{tag}", 1, Fixed(False, 6, 4), r, o)
        outputs += [f"q_{tag}", f"r_{tag}", f"ss_{tag}"]
    return QNet(
        name="modes",
        tensors=tensors,
        layers=tuple(layers),
        inputs=("x",),
        outputs=tuple(outputs),
        provenance={"producer": "tests/firmware/test_rtl_modes.py"},
    )


@pytest.fixture(scope="module")
def modes_fw(tmp_path_factory):
    net = modes_net()
    out = tmp_path_factory.mktemp("fw_modes")
    build(
        net, out, BuildOptions(latency_cycles=LATENCY, beat_bits=BEAT_BITS, hls=False, lint=False)
    )
    return net, out


@pytest.fixture(scope="module")
def modes_sim(modes_fw, sim_build):
    """simulator -> the modes design's trigger build, compiled once."""
    return functools.partial(sim_build, modes_fw[1])


@pytest.mark.rtl
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_every_mode_pair_bit_exact_on_rtl(simulator, modes_fw, modes_sim, tmp_path):
    net, _ = modes_fw
    sim = modes_sim(simulator)
    x = bench_vectors(net, N_RANDOM[simulator], seed=17)
    vec = write_vectors(net, x, tmp_path / "v.npz")
    env = trigger_env(
        vec, tmp_path / "run" / "stats.json", latency=LATENCY, out=tmp_path / "out.npz"
    )
    run_bench(sim, "l1forge.firmware.bench_trigger", env, tmp_path / "run")
    stats = read_stats(tmp_path / "run")
    assert stats["compared"] == len(x) and stats["mismatches"] == 0
    spec = packing.packing_from_qnet(net, BEAT_BITS)
    with np.load(tmp_path / "out.npz") as z:
        got = packing.unpack(z["out_bytes"], spec.output)
    np.testing.assert_array_equal(got, Emulator(net).run(x))
    # Per branch: its 4 + 4 + 1 output columns, as the RTL produced them.
    per = got.reshape(len(x), len(MODES), 9)
    for (i, a), (j, b) in itertools.combinations(enumerate(MODES), 2):
        assert np.any(per[:, i] != per[:, j]), f"modes {a} and {b} gave identical RTL outputs"


@pytest.mark.rtl
def test_modes_bench_fails_on_a_corrupted_expectation(modes_fw, modes_sim, tmp_path):
    net, _ = modes_fw
    assert_bench_fails_on_a_corrupted_expectation(
        modes_sim("verilator"), net, tmp_path, n=100, seed=3, corrupt=77, latency=LATENCY
    )


def test_modes_net_covers_every_pair():
    net = modes_net()
    seen = {(lay.rounding, lay.overflow) for lay in net.layers if lay.op == "quantize"}
    assert seen == set(MODES) and len(MODES) == 21
