"""The starting network of the continual-learning tests: a tiny trained VAE."""

from __future__ import annotations

from pathlib import Path

import pytest

from .events import signal_like, zero_bias_like


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished `l1forge train ad` folder of a tiny VAE (57 -> 8 -> 2, two epochs)."""
    from l1forge.models.config import make_config
    from l1forge.models.train import Inputs, train

    out = tmp_path_factory.mktemp("train_ad")
    raw = {
        "network": {"kind": "ad", "hidden": [8], "latent": 2, "decoder": [8]},
        "training": {
            "epochs": 2,
            "batch_size": 64,
            "learning_rate": 0.01,
            "seed": 1,
            "beta_kl": 0.01,
        },
    }
    bg = zero_bias_like(6000, seed=10).reshape(6000, -1)
    sig = signal_like(500, seed=11).reshape(500, -1)
    train(make_config(raw), Inputs({"minbias": bg}), Inputs({"sig": sig}), out, rate_hz=4e5)
    return out
