"""Session fixtures: one small real network, its firmware folder and its simulator builds."""

from __future__ import annotations

import dataclasses
import functools

import pytest

from l1forge.firmware.build import BuildOptions, build
from l1forge.firmware.vectors import bench_vectors
from l1forge.models.build import random_mlp

from .benches import BEAT_BITS, LATENCY, write_vectors


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


@pytest.fixture(scope="session")
def vectors_10k(bench_net, tmp_path_factory):
    x = bench_vectors(bench_net, 10_000, seed=11)
    return write_vectors(bench_net, x, tmp_path_factory.mktemp("vec") / "v10k.npz")


@pytest.fixture(scope="session")
def sim_builds(firmware_dir, sim_build):
    """(simulator, top) -> the bench firmware's build, compiled lazily, once in the session."""
    return functools.partial(sim_build, firmware_dir)
