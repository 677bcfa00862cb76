"""Session fixtures for the online tests: tiny real networks and a small real Pythia dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from l1forge.models import qnet
from l1forge.models.build import random_mlp
from l1forge.sim.dataset import concat_events, write_events
from l1forge.sim.generate import generate_events

N_MINBIAS = 1500
N_SIGNAL = 200
SIGNAL_PROCESS = "ato4l"
EVENTS_SEED = 7


@pytest.fixture(scope="session")
def tiny_ir_path(tmp_path_factory) -> Path:
    """An anomaly-detector-shaped IR (57 inputs, one score output) saved with ``qnet.save``."""
    net = random_mlp(score=True, seed=0, name="tiny_ad")
    return qnet.save(net, tmp_path_factory.mktemp("ir_ad") / "tiny_ad.json")


@pytest.fixture(scope="session")
def tiny_classifier_ir_path(tmp_path_factory) -> Path:
    """A classifier-shaped IR (57 inputs, one logit output) saved with ``qnet.save``."""
    net = random_mlp(n_out=1, score=False, seed=1, name="tiny_classifier")
    return qnet.save(net, tmp_path_factory.mktemp("ir_cls") / "tiny_classifier.json")


@pytest.fixture(scope="session")
def events_h5(tmp_path_factory) -> Path:
    """``events.h5``: 1500 minimum-bias then 200 A->4l Pythia events (pile-up 20), made once.

    The same folder also holds ``minbias.h5`` and ``signal.h5`` with each part alone;
    ``label`` in ``events.h5`` indexes ``processes`` = ("minbias", "ato4l").
    """
    out = tmp_path_factory.mktemp("events")
    bg = generate_events("minbias", N_MINBIAS, EVENTS_SEED, progress=False)
    sig = generate_events(SIGNAL_PROCESS, N_SIGNAL, EVENTS_SEED + 1, progress=False)
    write_events(out / "minbias.h5", bg)
    write_events(out / "signal.h5", sig)
    return write_events(out / "events.h5", concat_events([bg, sig]))
