"""Latency of the co-design network: alkaid's estimate, pipeline stages and the delay model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l1forge.errors import ConfigError
from l1forge.offline import latency_model as lm
from l1forge.offline.network import QuantMLP, QuantMLPConfig


def test_stages_at_a_clock():
    assert lm.stages_at(24.9, 40.0) == 1
    assert lm.stages_at(25.1, 40.0) == 2
    assert lm.stages_at(0.0, 40.0) == 1
    with pytest.raises(ConfigError, match="clock_mhz"):
        lm.stages_at(10.0, 0.0)


def test_the_firmware_pipelines_as_many_stages_as_the_estimate_says(tmp_path):
    from l1forge.firmware.verilog import write_verilog

    net = lm.calibration_networks(1, seed=4)[0]
    delay = lm.alkaid_delay_ns(net)
    clock = 2.5 * 1000.0 / delay  # a period of 0.4 x the delay: three stages
    rtl = write_verilog(net, tmp_path, latency_cycles=None, clock_mhz=clock, n_check=200)
    assert rtl.latency_cycles == lm.stages_at(delay, clock) == 3
    assert sum(rtl.stage_delay_ns) == pytest.approx(delay, rel=0.05)


def test_the_training_twin_has_the_terms_of_its_export():
    for bits in (4, 6, 9, 13):
        for frac in (3.0, 3.6):  # training sees real bits, the export their rounding
            net = QuantMLP(50, QuantMLPConfig(hidden=8, weight_frac_bits=frac), seed=1)
            got = [
                (n, round(float(b.detach())), round(float(w.detach())))
                for n, b, w in net.delay_terms(bits)
            ]
            assert got == lm.layer_terms(net.export(bits))


def test_the_delay_model_is_differentiable_and_grows_with_bits():
    net = QuantMLP(50, QuantMLPConfig(hidden=8), seed=1)
    bits = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    d = lm.DEFAULT_DELAY_MODEL.predict_terms(net.delay_terms(bits))
    d.backward()
    assert float(bits.grad) > 0 and float(net.frac_bits.grad.sum()) > 0


def test_calibration_recovers_alkaid_within_its_stated_error():
    nets = lm.calibration_networks(16, seed=1)
    model = lm.calibrate(nets)
    assert model.points == 16 and 0 < model.rel_error_loo < 0.15
    truth = np.array([lm.alkaid_delay_ns(n) for n in nets])
    pred = np.array([lm.DEFAULT_DELAY_MODEL.predict(n) for n in nets])
    # the shipped constants on networks of another seed than their calibration's
    assert np.mean(np.abs(pred - truth) / truth) < 0.15
    with pytest.raises(ConfigError, match="at least 3"):
        lm.calibrate(nets[:2])
