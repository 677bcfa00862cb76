"""Firmware of the default encoder: latency, yosys resources, bit-exact RTL runs and their speed.

By default measures the reference encoder (``l1forge.models.reference``: the default anomaly
detector 57 -> 32 -> 16 -> 3 latent + sum-of-squares score, trained on a fixed-seed Pythia
sample and cached under ``out/reference``; its first build takes a few minutes). ``--qnet``
measures another IR, ``--random`` a random-weight network of the same shape. Generates its
firmware at 2 cycles / 40 MHz and at 3 cycles, synthesizes both with yosys (about 3-4 min
each here), and streams vectors through the 2-cycle trigger wrapper on Icarus and on
Verilator, comparing every output with the emulator. Speeds are also given as ratios to the
emulator measured in the same run. Prints one JSON object; takes about 15 minutes.
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
from l1forge.firmware.build import BuildOptions
from l1forge.firmware.report import build_and_size
from l1forge.firmware.sim import build_sim, read_stats, run_bench
from l1forge.firmware.vectors import bench_vectors
from l1forge.models.build import random_mlp
from l1forge.models.emulator import Emulator
from l1forge.models.qnet import load


def _network(args: argparse.Namespace) -> tuple[object, str, str]:
    """(IR, network_source, description) for the options."""
    if args.random:
        net = random_mlp(57, (32, 16), 3, score=True, seed=0, name="default_encoder")
        return net, "random", "random_mlp(57, (32, 16), 3, score=True, seed=0): random weights"
    if args.qnet:
        return load(args.qnet), "trained", f"trained IR {args.qnet}"
    from l1forge.models.reference import reference_encoder

    ref = reference_encoder()
    return load(ref.qnet_path), ref.network_source, ref.describe()


def _bench(fw: Path, net, simulator: str, n: int, work: Path, latency: int) -> dict:
    spec = packing.packing_from_qnet(net, BuildOptions().beat_bits)
    x = bench_vectors(net, n, seed=2024)
    with Emulator(net) as emu:
        y = emu.run(x)
    vec = work / f"{simulator}.npz"
    out_b = packing.pack(y, spec.output)
    np.savez(vec, in_bytes=packing.pack(x, spec.input), expected=out_b, out_bytes=out_b.shape[1])
    t0 = time.perf_counter()
    sim = build_sim(fw, simulator, "trigger", work / f"build_{simulator}")
    build_s = time.perf_counter() - t0
    tdir = work / f"run_{simulator}"
    env = {
        "L1F_VECTORS": str(vec),
        "L1F_LATENCY": str(latency),
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
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--qnet", help="measure this IR instead of the reference encoder")
    which.add_argument("--random", action="store_true", help="a random-weight network instead")
    parser.add_argument("--icarus-vectors", type=int, default=3000)
    parser.add_argument("--verilator-vectors", type=int, default=20000)
    parser.add_argument(
        "--cycles", type=int, nargs="+", default=[2, 3], help="latencies to build (first: RTL)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    net, source, description = _network(args)
    with tempfile.TemporaryDirectory(prefix="l1forge-fw-bench-") as tmp:
        work = Path(tmp)
        builds = {}
        for cycles in args.cycles:
            builds[str(cycles)] = build_and_size(net, work / f"fw{cycles}", cycles)
        first = args.cycles[0]
        fw = work / f"fw{first}"
        icarus = _bench(fw, net, "icarus", args.icarus_vectors, work, first)
        verilator = _bench(fw, net, "verilator", args.verilator_vectors, work, first)
        x = bench_vectors(net, 200_000, seed=1)
        emu = Emulator(net)
        try:
            emu.run(x[:10_000])
            t0 = time.perf_counter()
            emu.run(x)
            emulator_rate = len(x) / (time.perf_counter() - t0)
        finally:
            emu.close()

    out = {
        "network": net.name,
        "network_source": source,
        "network_description": description,
        **{k: builds[str(first)][k] for k in ("lut", "ff", "dsp", "latency_ns")},
        "stage_delay_ns": builds[str(first)]["stage_delay_ns"],
        "timing_estimate_met": builds[str(first)]["timing_estimate_met"],
        "builds": builds,
        "rtl_latency_cycles": first,
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
    }
    print(json.dumps(out))
    return 0 if out["mismatches"] == 0 and out["failed_benches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
