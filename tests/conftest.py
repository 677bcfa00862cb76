"""Suite-wide rules: in CI, a test that needs an installed tool may not quietly skip."""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    # `make setup` installs every simulator and Chromium; under CI an `rtl` or `browser` test
    # that skips means set-up broke.
    if not (os.environ.get("CI") and report.skipped):
        return
    for marker, tool in (("rtl", "a simulator"), ("browser", "chromium")):
        if item.get_closest_marker(marker):
            report.outcome = "failed"
            report.longrepr = (
                f"{marker} test skipped under CI (set-up did not install {tool}): {report.longrepr}"
            )
            return


@pytest.fixture(scope="session")
def jet_tagger_models():
    """The hls4ml tutorial jet tagger (Sequential and functional), trained one epoch each."""
    from l1forge.models.examples import jet_tagger

    return {
        "sequential": jet_tagger(seed=1, epochs=1),
        "functional": jet_tagger(seed=2, epochs=1, functional=True),
    }


@pytest.fixture(scope="session")
def jet_tagger_ir(jet_tagger_models):
    """The Sequential jet tagger imported from QKeras with the tutorial's input format."""
    from l1forge.models.examples import JET_TAGGER_INPUT_FORMAT
    from l1forge.models.qkeras_import import import_qkeras, parse_format

    model = jet_tagger_models["sequential"]
    return import_qkeras(model, parse_format(JET_TAGGER_INPUT_FORMAT), name="jet_tagger")


@pytest.fixture(scope="session")
def sim_build(tmp_path_factory):
    """(firmware folder, simulator, top) -> its simulation build, compiled lazily, once."""
    from l1forge.firmware.sim import build_sim

    cache = {}

    def get(firmware_dir, simulator: str, top: str = "trigger"):
        key = (str(firmware_dir), simulator, top)
        if key not in cache:
            bdir = tmp_path_factory.mktemp(f"build_{simulator}_{top}")
            cache[key] = build_sim(firmware_dir, simulator, top, bdir)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def general_bn_model():
    """QDense -> BatchNormalization (scales of both signs, not powers of two) -> quantized_relu
    -> QDense: the batch norm is imported as the IR's fixed-point affine op."""
    from l1forge.models.examples import batchnorm_mlp

    return batchnorm_mlp(seed=4)


@pytest.fixture(scope="session")
def general_bn_ir(general_bn_model):
    """``general_bn_model`` imported with hls4ml's default input and batch-norm formats."""
    from l1forge.models.examples import JET_TAGGER_INPUT_FORMAT
    from l1forge.models.qkeras_import import import_qkeras, parse_format

    return import_qkeras(general_bn_model, parse_format(JET_TAGGER_INPUT_FORMAT), name="bn_net")


@pytest.fixture(scope="session")
def tiny_surrogate(tmp_path_factory):
    """(model, folder, training showers) of a surrogate for 3×3 cells: 8 θ points × 60 showers,
    a few epochs. Plumbing only; its fidelity is not meant to be good."""
    import torch

    from l1forge.sim import surrogate as sur
    from l1forge.sim.surrogate_data import ThetaRange, simulate_points, training_points

    torch.set_num_threads(1)
    rng_ = ThetaRange(n_cells=3)
    spec = sur.SurrogateSpec(range=rng_, transforms=2, hidden=16, energy_transforms=2,
                             energy_hidden=16)  # fmt: skip
    cfg = sur.TrainConfig(epochs=2, energy_epochs=3, batch=128, energy_batch=128)
    sh = simulate_points(rng_, training_points(rng_, 8, seed=3), 60, seed=3)
    model, info = sur.train(sh, spec, cfg)
    d = tmp_path_factory.mktemp("surrogate")
    sur.save(model, d, info)
    return model, d, sh
