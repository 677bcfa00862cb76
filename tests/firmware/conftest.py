"""Session fixtures: one small real network, its firmware folder and its simulator builds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from l1forge.firmware import packing
from l1forge.firmware.build import BuildOptions, build
from l1forge.firmware.vectors import bench_vectors
from l1forge.models.build import random_mlp
from l1forge.models.emulator import Emulator

LATENCY = 2
BEAT_BITS = 32


@pytest.fixture(scope="session")
def bench_net():
    """An encoder-shaped net small enough to simulate fast: two output tensors (mu, score)."""
    net = random_mlp(16, (8,), 3, score=True, seed=5, name="bench_enc")
    return dataclasses.replace(net, outputs=("mu", "score"))


@pytest.fixture(scope="session")
def firmware_dir(bench_net, tmp_path_factory):
    out = tmp_path_factory.mktemp("fw")
    build(bench_net, out, BuildOptions(latency_cycles=LATENCY, beat_bits=BEAT_BITS, hls=False))
    return out


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


@pytest.fixture(scope="session")
def vectors_10k(bench_net, tmp_path_factory):
    x = bench_vectors(bench_net, 10_000, seed=11)
    return write_vectors(bench_net, x, tmp_path_factory.mktemp("vec") / "v10k.npz")


@pytest.fixture(scope="session")
def sim_builds(firmware_dir, tmp_path_factory):
    """Compiles lazily, once per (simulator, top) in the session."""
    from l1forge.firmware.sim import build_sim

    cache = {}

    def get(simulator: str, top: str):
        if (simulator, top) not in cache:
            bdir = tmp_path_factory.mktemp(f"build_{simulator}_{top}")
            cache[simulator, top] = build_sim(firmware_dir, simulator, top, bdir)
        return cache[simulator, top]

    return get
