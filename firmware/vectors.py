"""Test vectors for a network's input format: the corners plus seeded random mixes.

Shared by the interpreter check, the cocotb benches and the benchmark so every consumer
exercises the same cases: zero, the most negative and most positive codes, single hot
features at either extreme, alternating extremes, and random vectors at three scales
(full range, a fraction of it to stay below saturation, and sparse ones that put hidden
activations near the ReLU boundary).
"""

from __future__ import annotations

import numpy as np

from l1forge.models.qnet import QNet


def _limits(net: QNet) -> tuple[int, int, int]:
    spec = net.input_specs[0]
    return spec.size, spec.fixed.min_int, spec.fixed.max_int


def corner_vectors(net: QNet) -> np.ndarray:
    """Deterministic corner cases of the input format, ``int64 (M, n_in)``."""
    n, lo, hi = _limits(net)
    rows = [np.zeros(n), np.full(n, lo), np.full(n, hi), np.full(n, -1), np.full(n, 1)]
    alt = np.where(np.arange(n) % 2 == 0, lo, hi)
    rows += [alt, np.where(alt == lo, hi, lo)]
    for value in (lo, hi):
        hot = np.zeros((n, n))
        np.fill_diagonal(hot, value)
        rows += list(hot)
    return np.asarray(rows, dtype=np.int64).clip(lo, hi)


def random_vectors(net: QNet, n_vectors: int, seed: int = 0) -> np.ndarray:
    """Seeded random inputs mixing full-range, moderate and sparse vectors, ``int64``."""
    n, lo, hi = _limits(net)
    rng = np.random.default_rng(seed)
    full = rng.integers(lo, hi + 1, size=(n_vectors, n))
    width = net.input_specs[0].fixed.width
    span = max(1, (hi + 1) >> max(0, min(width - 1, width // 3)))
    moderate = rng.integers(max(lo, -span), min(hi, span) + 1, size=(n_vectors, n))
    sparse = np.where(rng.random((n_vectors, n)) < 0.1, moderate, 0)
    kind = rng.integers(0, 3, size=(n_vectors, 1))
    return np.where(kind == 0, full, np.where(kind == 1, moderate, sparse)).astype(np.int64)


def bench_vectors(net: QNet, n_random: int, seed: int = 0) -> np.ndarray:
    """Corners first, then ``n_random`` random vectors."""
    return np.concatenate([corner_vectors(net), random_vectors(net, n_random, seed)])
