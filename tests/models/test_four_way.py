"""The exported reference-shaped encoder on the RTL, and one network through all four models.

The network is the default anomaly detector (57 -> 32 -> 16 -> 3 latent + sum of squares),
trained for a few steps and exported by the QKeras exporter, so its input ``scale`` op is
simulated as Verilog. QKeras ``predict`` == hls4ml C simulation == emulator == RTL on Icarus
and on Verilator, compared with ``assert_array_equal``. Icarus evaluates this netlist at about
10-20 vectors/s per core (see the report of issue 12), so ``make test`` streams the corners
plus 1,400 random vectors through it, split over two processes, and ``make validate`` 10,000.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.firmware import packing
from l1forge.firmware.build import BuildOptions, build
from l1forge.firmware.sim import read_stats, run_benches
from l1forge.firmware.vectors import bench_vectors
from l1forge.models import hls, networks
from l1forge.models.emulator import Emulator
from l1forge.models.vectors import corner_vectors, relu_boundary_vectors

from ..firmware.benches import (
    BEAT_BITS,
    assert_bench_fails_on_a_corrupted_expectation,
    trigger_env,
    write_vectors,
)

LATENCY = 2
N_ICARUS = 1_400  # random vectors after the ~600 corners in `make test`
SHARDS = {"icarus": 2, "verilator": 1}


@dataclass(frozen=True)
class RtlRun:
    x: np.ndarray
    outputs: np.ndarray | None  # int64 (N, 4): mu then score, None if a shard lost results
    tests: int
    failed: int
    compared: int
    mismatches: int
    cycles: int
    vectors_per_s: float


@pytest.fixture(scope="module")
def exported(built, tmp_path_factory):
    """The trained default encoder, its IR with mu and score as outputs, and its firmware."""
    b = built("default", "ad")
    net = dataclasses.replace(b.net, outputs=("mu", "score"))
    assert [lay.op for lay in net.layers][:1] == ["scale"]
    fw = tmp_path_factory.mktemp("fw_exported")
    build(net, fw, BuildOptions(latency_cycles=LATENCY, beat_bits=BEAT_BITS, hls=False, lint=False))
    return b, net, fw


@pytest.fixture(scope="module")
def sim_of(exported, sim_build):
    """simulator -> its build of the exported encoder's trigger wrapper, compiled once."""
    return functools.partial(sim_build, exported[2])


@pytest.fixture(scope="module")
def rtl_run(exported, sim_of, tmp_path_factory):
    """(simulator, n_random) -> RtlRun: every corner then n_random vectors, run once each."""
    _, net, _ = exported
    runs = {}
    spec = packing.packing_from_qnet(net, BEAT_BITS)

    def get(simulator: str, n_random: int) -> RtlRun:
        if (simulator, n_random) in runs:
            return runs[simulator, n_random]
        work = tmp_path_factory.mktemp(f"run_{simulator}_{n_random}")
        x = bench_vectors(net, n_random, seed=5)
        parts = np.array_split(np.arange(len(x)), SHARDS[simulator])
        jobs = []
        for k, idx in enumerate(parts):
            vec = write_vectors(net, x[idx], work / f"v{k}.npz")
            env = trigger_env(
                vec, work / f"s{k}" / "stats.json", latency=LATENCY, out=work / f"out{k}.npz"
            )
            jobs.append((env, work / f"s{k}"))
        results = run_benches(
            sim_of(simulator), "l1forge.firmware.bench_trigger", jobs, check=False
        )
        stats = [read_stats(work / f"s{k}") for k in range(len(parts))]
        outs = [work / f"out{k}.npz" for k in range(len(parts))]
        outputs = None
        if all(p.is_file() for p in outs):
            outputs = np.concatenate(
                [packing.unpack(np.load(p)["out_bytes"], spec.output) for p in outs]
            )
        seconds = max(s["seconds"] for s in stats)
        runs[simulator, n_random] = RtlRun(
            x=x,
            outputs=outputs,
            tests=sum(r.tests for r in results),
            failed=sum(r.failed for r in results),
            compared=sum(s["compared"] for s in stats),
            mismatches=sum(s["mismatches"] for s in stats),
            cycles=sum(s["cycles"] for s in stats),
            vectors_per_s=sum(s["compared"] for s in stats) / seconds,
        )
        return runs[simulator, n_random]

    return get


def _check_run(run: RtlRun, net) -> None:
    assert run.tests >= 1 and run.failed == 0
    assert run.compared == len(run.x) and run.mismatches == 0
    assert run.outputs is not None
    assert_array_equal(run.outputs, Emulator(net).run(run.x))


@pytest.mark.rtl
@pytest.mark.parametrize(
    ("simulator", "n_random"),
    [
        # `make test`: N_ICARUS vectors on both (the run test_qkeras_hls4ml_emulator_rtl_agree
        # also uses); 10,000 on each in `make validate` (Verilator's alone took 170 s here)
        ("verilator", N_ICARUS),
        ("icarus", N_ICARUS),
        pytest.param("verilator", 10_000, marks=pytest.mark.slow),
        pytest.param("icarus", 10_000, marks=pytest.mark.slow),
    ],
)
def test_exported_encoder_on_rtl(simulator, n_random, exported, rtl_run):
    _, net, _ = exported
    run = rtl_run(simulator, n_random)
    # the corners come first: the solved ReLU boundaries of dense0, then the extremes
    boundary = relu_boundary_vectors(net)
    assert len(boundary) >= 32
    assert_array_equal(run.x[: len(corner_vectors(net, 5))], corner_vectors(net, 5))
    assert len(run.x) >= n_random + len(boundary)
    _check_run(run, net)
    # II = 1 and fixed latency in every shard: n vectors back to back take n + latency cycles.
    assert run.cycles == len(run.x) + SHARDS[simulator] * LATENCY


@pytest.mark.rtl
def test_qkeras_hls4ml_emulator_rtl_agree(exported, rtl_run):
    """One network, one vector set, all four models, exact equality."""
    b, net, _ = exported
    icarus = rtl_run("icarus", N_ICARUS)
    x = icarus.x
    verilator = rtl_run("verilator", N_ICARUS)
    assert_array_equal(verilator.x, x)
    emu = Emulator(net)
    y_int = emu.run(x)
    assert icarus.outputs is not None and verilator.outputs is not None
    assert_array_equal(icarus.outputs, y_int)
    assert_array_equal(verilator.outputs, y_int)
    score_fmt = net.tensors["score"].fixed
    rtl_score = score_fmt.to_float(verilator.outputs[:, -1:])
    y_score = emu.run_float(x)[:, -1:]
    assert_array_equal(networks.exact_predict(b.deploy, x), y_score)
    assert_array_equal(hls.predict(b.hls, x), y_score)
    assert_array_equal(rtl_score, y_score)
    assert_array_equal(score_fmt.to_float(icarus.outputs[:, -1:]), y_score)
    assert len(np.unique(y_score)) > 20  # not a degenerate set


@pytest.mark.rtl
def test_exported_bench_fails_on_a_corrupted_expectation(exported, sim_of, tmp_path):
    _, net, _ = exported
    assert_bench_fails_on_a_corrupted_expectation(
        sim_of("verilator"), net, tmp_path, n=100, seed=1, corrupt=50, latency=LATENCY
    )
