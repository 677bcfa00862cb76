"""Small Pythia samples shared by the sim tests, generated once per session."""

from __future__ import annotations

import pytest

from l1forge.sim.dataset import EventSet
from l1forge.sim.generate import generate_events

TEST_LIBRARY = 2000  # pile-up library events: small, made once per machine and cached


@pytest.fixture(scope="session")
def sample():
    """``sample(process, n, pileup, seed)``: generated once per argument set per session."""
    cache: dict[tuple, EventSet] = {}

    def get(process: str, n: int, pileup: float = 0.0, seed: int = 11) -> EventSet:
        key = (process, n, pileup, seed)
        if key not in cache:
            cache[key] = generate_events(
                process, n, seed, pileup, progress=False, pileup_library_events=TEST_LIBRARY
            )
        return cache[key]

    return get
