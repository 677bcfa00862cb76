"""Fixtures for the online tests: tiny real networks, a small real Pythia dataset (session), and
running parts (a pipeline, a DQM service, a ZeroMQ context) that are always stopped at teardown."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from l1forge.models import qnet
from l1forge.models.build import random_mlp
from l1forge.online.datapath.pipeline import Pipeline, PipelineError
from l1forge.online.dqm.service import DQMService
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
    lib = {"pileup_library_events": 2000}  # a small shared pile-up library, cached once
    bg = generate_events("minbias", N_MINBIAS, EVENTS_SEED, progress=False, **lib)
    sig = generate_events(SIGNAL_PROCESS, N_SIGNAL, EVENTS_SEED + 1, progress=False, **lib)
    write_events(out / "minbias.h5", bg)
    write_events(out / "signal.h5", sig)
    return write_events(out / "events.h5", concat_events([bg, sig]))


@pytest.fixture
def zmq_ctx() -> Iterator[zmq.Context]:
    """A ZeroMQ context of the test's own; its sockets are closed (linger 0) at teardown."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def running_pipeline(tmp_path):
    """``running_pipeline(cfg, run, run_dir=None, *, start=True, **kw)`` -> a started `Pipeline`.

    ``run_dir`` defaults to ``tmp_path / f"run{run}"``; ``kw`` go to `Pipeline`. With
    ``start=False`` the test starts it itself. The test may stop it (``stop`` returns the same
    summary when called again); every pipeline still running at teardown is stopped.
    """
    made: list[Pipeline] = []

    def start(cfg, run: int, run_dir: Path | None = None, *, start: bool = True, **kw) -> Pipeline:
        pipe = Pipeline(cfg, run, run_dir or tmp_path / f"run{run}", **kw)
        made.append(pipe)
        if start:
            pipe.start()
        return pipe

    yield start
    for pipe in reversed(made):
        if pipe.state != "created":
            with contextlib.suppress(PipelineError):  # a start that failed tore itself down
                pipe.stop()


@pytest.fixture
def running_dqm():
    """``running_dqm(endpoint, **kw)`` -> a started `DQMService`; stopped at teardown unless the
    test stopped it."""
    made: list[DQMService] = []

    def start(endpoint: str, **kw) -> DQMService:
        svc = DQMService(endpoint, **kw).start()
        made.append(svc)
        return svc

    yield start
    for svc in reversed(made):
        if svc.result is None:
            svc.stop()


@pytest.fixture(scope="session")
def scaled_ad_net():
    from .datapath.runs import scaled_ad

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
