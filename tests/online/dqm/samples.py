"""Helpers for the DQM tests: the stream of scores and seed bits the daemon would make, and
bootstrap lumisections drawn from a small Pythia sample."""

from __future__ import annotations

import numpy as np

from l1forge.models.build import random_mlp
from l1forge.models.emulator import Emulator

PER_LS = 2000
SEEDS = ("AD_Loose", "AD_Tight", "ZeroBias")


class Stream:
    """Scores (a real qnet, emulated) and seed bits of hardware events, as the daemon makes them."""

    def __init__(self, clean_hw: np.ndarray):
        self.emulator = Emulator(random_mlp(score=True, seed=0, name="ad"))
        self.thresholds = np.quantile(self.score(clean_hw), [0.9, 0.99])
        self.n = 0

    def score(self, hw: np.ndarray) -> np.ndarray:
        return self.emulator.run_float(hw.reshape(len(hw), -1))[:, 0]

    def results(self, hw: np.ndarray):
        s = self.score(hw)
        seq = self.n + np.arange(len(hw))
        self.n += len(hw)
        bits = np.column_stack([s > t for t in self.thresholds] + [seq % 100 == 0])
        return s, bits


def bootstrap(pool, seed):
    rng = np.random.default_rng(seed)
    return lambda ls: pool[rng.integers(0, len(pool), PER_LS)]
