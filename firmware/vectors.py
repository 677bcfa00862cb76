"""Bench vectors for a network's input format: every corner first, then seeded random vectors.

The corners and the random mixes come from ``l1forge.models.vectors`` (the one generator the
emulator, hls4ml and RTL checks share): the solved first-layer ReLU boundaries, zero, the most
negative and most positive codes, single hot features at either extreme, alternating extremes,
random mixes of extremes, then uniform, moderate, sparse and near-offset random vectors. The
corners come first so a bench that breaks on one fails within its first few hundred cycles.
"""

from __future__ import annotations

import numpy as np

from l1forge.models.qnet import QNet
from l1forge.models.vectors import corner_vectors, random_vectors


def bench_vectors(net: QNet, n_random: int, seed: int = 0) -> np.ndarray:
    """Every corner, then ``n_random`` random vectors, ``int64 (M, n_in)``."""
    return np.concatenate([corner_vectors(net, seed), random_vectors(net, n_random, seed)])
