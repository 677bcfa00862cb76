"""Firmware of the default encoder: latency, yosys resources, bit-exact RTL runs and their speed.

Builds a fresh default-size encoder IR (57 -> 32 -> 16 -> 3 latent + sum-of-squares score,
random 8-bit weights from ``random_mlp``; a trained IR can be given with ``--qnet``), generates
its firmware at 2 cycles / 40 MHz, synthesizes it with yosys, and streams vectors through the
trigger wrapper on Icarus and on Verilator, comparing every output with the emulator. Speeds are
also given as ratios to the emulator measured in the same run. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from l1forge.firmware import packing
from l1forge.firmware.build import BuildOptions, build
from l1forge.firmware.report import report
from l1forge.firmware.sim import build_sim, read_stats, run_bench
from l1forge.firmware.vectors import bench_vectors
from l1forge.models.build import random_mlp
from l1forge.models.emulator import Emulator
from l1forge.models.qnet import load


def _bench(fw: Path, net, simulator: str, n: int, work: Path) -> dict:
    spec = packing.packing_from_qnet(net, BuildOptions().beat_bits)
    x = bench_vectors(net, n, seed=2024)
    y = Emulator(net).run(x)
    vec = work / f"{simulator}.npz"
    out_b = packing.pack(y, spec.output)
    np.savez(vec, in_bytes=packing.pack(x, spec.input), expected=out_b, out_bytes=out_b.shape[1])
    t0 = time.perf_counter()
    sim = build_sim(fw, simulator, "trigger", work / f"build_{simulator}")
    build_s = time.perf_counter() - t0
    tdir = work / f"run_{simulator}"
    env = {
        "L1F_VECTORS": str(vec),
        "L1F_LATENCY": "2",
        "L1F_PATTERN": "back_to_back",
        "L1F_STATS": str(tdir / "stats.json"),
    }
    tdir.mkdir()
    result = run_bench(sim, "l1forge.firmware.bench_trigger", env, tdir, check=False)
    stats = read_stats(tdir)
    stats["build_s"] = build_s
    stats["failed_tests"] = result.failed
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--qnet", help="a trained qnet IR instead of the random default encoder")
    parser.add_argument("--icarus-vectors", type=int, default=3000)
    parser.add_argument("--verilator-vectors", type=int, default=20000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    net = (
        load(args.qnet)
        if args.qnet
        else random_mlp(57, (32, 16), 3, score=True, seed=0, name="default_encoder")
    )
    with tempfile.TemporaryDirectory(prefix="l1forge-fw-bench-") as tmp:
        work = Path(tmp)
        fw = work / "fw"
        t0 = time.perf_counter()
        manifest = build(net, fw, BuildOptions(latency_cycles=2, clock_mhz=40.0, hls=False))
        build_s = time.perf_counter() - t0
        rep = report(fw)
        icarus = _bench(fw, net, "icarus", args.icarus_vectors, work)
        verilator = _bench(fw, net, "verilator", args.verilator_vectors, work)
        x = bench_vectors(net, 200_000, seed=1)
        emu = Emulator(net)
        t0 = time.perf_counter()
        emu.run(x)
        emulator_rate = len(x) / (time.perf_counter() - t0)

    res = rep["resources"]
    out = {
        "network": net.name,
        "source": args.qnet
        or "random_mlp(57, (32, 16), 3, score=True, seed=0): random 8-bit weights",
        "latency_cycles": manifest["latency_cycles"],
        "clock_mhz": manifest["clock_mhz"],
        "latency_ns": manifest["latency_ns"],
        "initiation_interval": manifest["initiation_interval"],
        "lut": res["lut"],
        "ff": res["ff"],
        "carry": res["carry"],
        "dsp": res["dsp"],
        "bram": res["bram"],
        "vu9p_lut_fraction": rep["vu9p_fraction"]["lut"],
        "yosys": rep["yosys"]["command"],
        "yosys_s": rep["yosys"]["seconds"],
        "alkaid_cost_estimate": manifest["alkaid"]["cost"],
        "alkaid_stage_delay_ns": manifest["alkaid"]["stage_delay_ns"],
        "interpreter_vectors_checked": manifest["alkaid"]["interpreter_vectors_checked"],
        "vectors_compared": icarus["compared"] + verilator["compared"],
        "mismatches": icarus["mismatches"] + verilator["mismatches"],
        "failed_benches": icarus["failed_tests"] + verilator["failed_tests"],
        "icarus_vectors": icarus["compared"],
        "verilator_vectors": verilator["compared"],
        "icarus_vectors_per_s": icarus["vectors_per_s"],
        "verilator_vectors_per_s": verilator["vectors_per_s"],
        "verilator_over_icarus": verilator["vectors_per_s"] / icarus["vectors_per_s"],
        "emulator_vectors_per_s": emulator_rate,
        "emulator_over_verilator": emulator_rate / verilator["vectors_per_s"],
        "icarus_build_s": icarus["build_s"],
        "verilator_build_s": verilator["build_s"],
        "firmware_build_s": build_s,
        "target_met": rep["target"],
    }
    print(json.dumps(out))
    return 0 if out["mismatches"] == 0 and out["failed_benches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
