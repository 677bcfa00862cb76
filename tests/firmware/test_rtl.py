"""The generated firmware on Icarus and Verilator, every output compared with the emulator."""

from __future__ import annotations

import numpy as np
import pytest

from l1forge.firmware.sim import BenchFailed, read_stats, run_bench
from l1forge.firmware.vectors import bench_vectors
from l1forge.models.emulator import Emulator

from .benches import LATENCY, trigger_env, write_vectors

SIMS = ["icarus", "verilator"]


def _trigger_env(vectors, pattern, stats):
    return trigger_env(vectors, stats, pattern=pattern, seed=3)


@pytest.mark.rtl
@pytest.mark.parametrize("simulator", SIMS)
def test_trigger_10k_back_to_back(simulator, sim_builds, vectors_10k, tmp_path):
    sim = sim_builds(simulator, "trigger")
    run_bench(
        sim,
        "l1forge.firmware.bench_trigger",
        _trigger_env(vectors_10k, "back_to_back", tmp_path / "stats.json"),
        tmp_path,
    )
    stats = read_stats(tmp_path)
    assert stats["compared"] >= 10_000 and stats["mismatches"] == 0
    # II = 1 and fixed latency: n vectors back to back take n + latency cycles.
    assert stats["cycles"] == stats["vectors"] + LATENCY


@pytest.mark.rtl
@pytest.mark.parametrize("simulator", SIMS)
@pytest.mark.parametrize("pattern", ["gaps", "reset"])
def test_trigger_gaps_and_reset(simulator, pattern, sim_builds, bench_net, tmp_path):
    x = bench_vectors(bench_net, 600, seed=21)
    vec = write_vectors(bench_net, x, tmp_path / "v.npz")
    sim = sim_builds(simulator, "trigger")
    run_bench(
        sim,
        "l1forge.firmware.bench_trigger",
        _trigger_env(vec, pattern, tmp_path / "stats.json"),
        tmp_path,
    )
    stats = read_stats(tmp_path)
    assert stats["compared"] == len(x) and stats["mismatches"] == 0
    if pattern == "reset":
        assert stats["resets"] == 2


@pytest.mark.rtl
def test_bench_fails_on_a_corrupted_expectation(sim_builds, bench_net, tmp_path):
    x = bench_vectors(bench_net, 200, seed=4)
    vec = write_vectors(bench_net, x, tmp_path / "v.npz", corrupt=123)
    sim = sim_builds("icarus", "trigger")
    env = _trigger_env(vec, "back_to_back", tmp_path / "stats.json")
    with pytest.raises(BenchFailed):
        run_bench(sim, "l1forge.firmware.bench_trigger", env, tmp_path / "a")
    result = run_bench(sim, "l1forge.firmware.bench_trigger", env, tmp_path / "b", check=False)
    assert (result.tests, result.failed) == (1, 1)
    assert read_stats(tmp_path)["mismatches"] == 1


def _axis_env(vec, stats):
    return {"L1F_VECTORS": str(vec), "L1F_PAUSE": "0.3", "L1F_SEED": "5", "L1F_STATS": str(stats)}


# Icarus re-evaluates the core's netlist on every input beat (8 per event here) at about
# 3 ms each, so `make test` gives it 2,000 events and `make validate` 10,000.
@pytest.mark.rtl
@pytest.mark.parametrize(
    ("simulator", "n_random"),
    [
        ("verilator", 10_000),
        ("icarus", 2_000),
        pytest.param("icarus", 10_000, marks=pytest.mark.slow),
    ],
)
def test_axis_frames_with_backpressure(simulator, n_random, sim_builds, bench_net, tmp_path):
    x = bench_vectors(bench_net, n_random, seed=8)
    vec = write_vectors(bench_net, x, tmp_path / "v.npz")
    sim = sim_builds(simulator, "axis")
    env = _axis_env(vec, tmp_path / "stats.json")
    run_bench(sim, "l1forge.firmware.bench_axis", env, tmp_path, testcase="axis_frames")
    stats = read_stats(tmp_path)
    assert stats["vectors"] == len(x) >= n_random and stats["mismatches"] == 0
    assert stats["frames"] > 10 and stats["out_beats"] == 2 * len(x)
    assert stats["cycles"] > stats["in_beats"]  # the random pauses did stall the stream


@pytest.mark.rtl
def test_axis_bench_fails_on_a_corrupted_expectation(sim_builds, bench_net, tmp_path):
    x = bench_vectors(bench_net, 100, seed=4)
    vec = write_vectors(bench_net, x, tmp_path / "v.npz", corrupt=321)
    sim = sim_builds("verilator", "axis")
    env = _axis_env(vec, tmp_path / "stats.json")
    result = run_bench(
        sim, "l1forge.firmware.bench_axis", env, tmp_path, testcase="axis_frames", check=False
    )
    assert (result.tests, result.failed) == (1, 1)
    assert read_stats(tmp_path)["mismatches"] == 1


@pytest.mark.rtl
def test_pynq_driver_byte_stream_on_rtl(sim_builds, bench_net, firmware_dir, tmp_path):
    """No board exists here: the driver's real infer() runs against the AXI-stream RTL on
    Verilator through a simulated DMA engine, so its packed byte stream is proven on the RTL."""
    x = bench_vectors(bench_net, 300, seed=9)
    vec = write_vectors(bench_net, x, tmp_path / "v.npz")
    sim = sim_builds("verilator", "axis")
    env = {
        "L1F_VECTORS": str(vec),
        "L1F_FIRMWARE": str(firmware_dir),
        "L1F_BATCH": "64",
        "L1F_PAUSE": "0.2",
    }
    run_bench(sim, "l1forge.firmware.bench_axis", env, tmp_path, testcase="axis_driver")


@pytest.mark.rtl
def test_rtl_backend_matches_emulator(firmware_dir, bench_net, sim_builds):
    from l1forge.firmware.rtl_backend import RtlSimBackend

    backend = RtlSimBackend(firmware_dir, "verilator", sim=sim_builds("verilator", "trigger"))
    try:
        x = bench_vectors(bench_net, 400, seed=13)
        np.testing.assert_array_equal(backend.infer(x), Emulator(bench_net).run(x))
        assert backend.name == "rtl-verilator"
    finally:
        backend.close()


@pytest.mark.rtl
@pytest.mark.slow
def test_trigger_one_million_vectors(sim_builds, bench_net, tmp_path):
    x = bench_vectors(bench_net, 1_000_000, seed=99)
    vec = write_vectors(bench_net, x, tmp_path / "v.npz")
    sim = sim_builds("verilator", "trigger")
    run_bench(
        sim,
        "l1forge.firmware.bench_trigger",
        _trigger_env(vec, "back_to_back", tmp_path / "stats.json"),
        tmp_path,
    )
    assert read_stats(tmp_path)["compared"] >= 1_000_000
