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


@pytest.fixture(scope="session")
def scaled_ad_net():
    from .runs import scaled_ad

    return scaled_ad()


@pytest.fixture(scope="session")
def scaled_ad_ir(scaled_ad_net, tmp_path_factory) -> Path:
    from l1forge.models import qnet

    return qnet.save(scaled_ad_net, tmp_path_factory.mktemp("ir_scaled") / "scaled_ad.json")


@pytest.fixture(scope="session")
def scaled_ad_fw(scaled_ad_net, tmp_path_factory) -> Path:
    """``firmware build --registers --seeds 4 --latency-cycles 3`` of the scaled AD (no HLS)."""
    from l1forge.firmware.build import BuildOptions, build

    out = tmp_path_factory.mktemp("fw_scaled")
    opts = BuildOptions(latency_cycles=3, beat_bits=32, hls=False, registers=True, seeds=4)
    build(scaled_ad_net, out, opts)
    return out
