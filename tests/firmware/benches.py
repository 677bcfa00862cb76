"""Helpers for the cocotb benches run from the tests: the bench firmware's latency and bus width,
the vector files the benches read, and the trigger bench's environment."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from l1forge.firmware import packing
from l1forge.models.emulator import Emulator

LATENCY = 2
BEAT_BITS = 32


def write_vectors(net, x, path, corrupt: int | None = None):
    """npz for the benches: packed inputs, packed emulator outputs (optionally one corrupted)."""
    spec = packing.packing_from_qnet(net, BEAT_BITS)
    y = Emulator(net).run(x)
    in_b = packing.pack(x, spec.input, spec.input.bytes_for(BEAT_BITS))
    out_b = packing.pack(y, spec.output, spec.output.bytes_for(BEAT_BITS))
    if corrupt is not None:
        out_b[corrupt, 0] ^= 1
    np.savez(path, in_bytes=in_b, expected=out_b, out_bytes=out_b.shape[1], x=x, expected_int=y)
    return path


def trigger_env(
    vectors: Path,
    stats: Path,
    *,
    latency: int = LATENCY,
    pattern: str = "back_to_back",
    seed: int | None = None,
    out: Path | None = None,
) -> dict[str, str]:
    """The environment of ``l1forge.firmware.bench_trigger``: vectors in, the stats JSON (and,
    with `out`, the outputs the RTL produced) out."""
    env = {"L1F_VECTORS": str(vectors), "L1F_LATENCY": str(latency), "L1F_PATTERN": pattern}
    if seed is not None:
        env["L1F_SEED"] = str(seed)
    env["L1F_STATS"] = str(stats)
    if out is not None:
        env["L1F_OUT"] = str(out)
    return env


def assert_bench_fails_on_a_corrupted_expectation(
    sim, net, tmp_path: Path, *, n: int, seed: int, corrupt: int, latency: int
) -> None:
    """The trigger bench on `n` vectors with one expected output corrupted: it fails, and only
    that vector mismatches."""
    from l1forge.firmware.sim import read_stats, run_bench
    from l1forge.firmware.vectors import bench_vectors

    x = bench_vectors(net, n, seed=seed)
    vec = write_vectors(net, x, tmp_path / "v.npz", corrupt=corrupt)
    env = trigger_env(vec, tmp_path / "run" / "stats.json", latency=latency)
    result = run_bench(sim, "l1forge.firmware.bench_trigger", env, tmp_path / "run", check=False)
    assert (result.tests, result.failed) == (1, 1)
    assert read_stats(tmp_path / "run")["mismatches"] == 1


def build_ir_with_cli(net, tmp, name: str, latency_cycles: int):
    """``l1forge firmware build`` of ``net`` saved in ``tmp`` (hls4ml C-sim on 1,500 vectors)."""
    from l1forge.cli import main
    from l1forge.models.qnet import save

    ir = save(net, tmp / f"{name}.qnet.json")
    out = tmp / "fw"
    args = [
        "firmware",
        "build",
        str(ir),
        "--out",
        str(out),
        "--latency-cycles",
        str(latency_cycles),
    ]
    assert main([*args, "--axis-beat-bits", "32", "--hls-csim-vectors", "1500"]) == 0
    return out
