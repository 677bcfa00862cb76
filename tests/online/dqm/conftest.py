"""Fixtures of the DQM tests: the online session's minimum-bias sample and a stream over it."""

from __future__ import annotations

import pytest

from l1forge.sim import faults
from l1forge.sim.dataset import read_events

from .samples import Stream


@pytest.fixture(scope="module")
def clean_hw(events_h5):
    """1500 minimum-bias events at pile-up 20 (the online session sample), hardware units."""
    return read_events(events_h5.parent / "minbias.h5").objects_hw


@pytest.fixture(scope="module")
def high_pileup_hw():
    """400 minimum-bias events at pile-up 50, generated for the pile-up fault."""
    return faults.HigherPileup(pileup_mean=50.0).generate(400, seed=21).objects_hw


@pytest.fixture
def stream(clean_hw):
    """A fresh stream per test, so zero-bias decisions do not depend on the tests run before."""
    return Stream(clean_hw)
