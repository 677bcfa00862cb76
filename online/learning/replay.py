"""The learner's replay buffer: a uniform sample of every zero-bias event seen so far.

Fine-tuning mixes these older events into the training set so the network does not forget
the conditions it was made for.
"""

from __future__ import annotations

import numpy as np

from l1forge.errors import ConfigError


class ReplayBuffer:
    """A uniform sample of every event offered so far (reservoir sampling, Vitter's algorithm R)."""

    def __init__(self, capacity: int, n_features: int, seed: int = 0):
        if capacity < 1:
            raise ConfigError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.data = np.zeros((capacity, n_features), dtype=np.int64)
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, x: np.ndarray) -> None:
        """Offer rows of ``x``; each of the ``seen`` events is kept with equal probability."""
        x = np.asarray(x, dtype=np.int64)
        free = max(0, self.capacity - self.seen)
        head = x[:free]
        self.data[self.seen : self.seen + len(head)] = head
        self.seen += len(head)
        for row in x[free:]:
            self.seen += 1
            j = int(self._rng.integers(0, self.seen))
            if j < self.capacity:
                self.data[j] = row

    def sample(self, n: int) -> np.ndarray:
        """``n`` distinct stored events (all of them when fewer are stored)."""
        k = len(self)
        idx = self._rng.choice(k, size=min(n, k), replace=False)
        return self.data[:k][idx]
