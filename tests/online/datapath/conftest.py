"""Fixtures of the data-path tests: the two tiny models of a run and its replay configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from .runs import make_cfg


@pytest.fixture(scope="session")
def models(tiny_ir_path, tiny_classifier_ir_path) -> dict[str, Path]:
    return {"ad": tiny_ir_path, "classifier": tiny_classifier_ir_path}


@pytest.fixture
def run_cfg(tmp_path, events_h5, models):
    """``run_cfg(**over)``: `runs.make_cfg` on the test's folder, the session events and models."""
    return lambda **over: make_cfg(tmp_path, events_h5, models, **over)
