"""Latency of the co-design network: alkaid's delay estimate and a calibrated model of it.

The firmware part (:mod:`l1forge.firmware.verilog`) pipelines alkaid's combinational program
into stages; the number of stages a network needs at a clock is its estimated combinational
delay over the clock period, rounded up. :func:`alkaid_delay_ns` gives that estimate for an
exported qnet IR in a fraction of a second (no synthesis), so every design is reported with it.

Training needs a differentiable stand-in: delay ≈ c0 + c1 · Σ_layers log2(n_in · in_bits ·
weight_bits) (adder-tree depth grows with the log of the number of partial products). It is
fitted by least squares to alkaid's estimate on networks of the co-design shape; its error is
the leave-one-out mean relative error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from l1forge.errors import ConfigError
from l1forge.models.qnet import QNet


def alkaid_delay_ns(net: QNet) -> float:
    """alkaid's estimated combinational delay of the whole network (the firmware's passes)."""
    from l1forge.firmware.verilog import optimize_comb, to_comb

    return float(optimize_comb(to_comb(net)).latency[1])


def stages_at(delay_ns: float, clock_mhz: float) -> int:
    """Pipeline stages a delay needs at a clock (as ``write_verilog(latency_cycles=None)``)."""
    if clock_mhz <= 0 or not math.isfinite(clock_mhz):
        raise ConfigError(f"clock_mhz must be positive, got {clock_mhz}")
    return max(1, math.ceil(delay_ns * clock_mhz / 1000.0))


def layer_terms(net: QNet) -> list[tuple[int, int, int]]:
    """(inputs, input width, weight width) of every dense layer of an exported network."""
    out = []
    for lay in net.layers:
        if lay.op == "dense":
            n_in = int(lay.arrays["weight"].shape[0])
            w_bits = lay.array_formats["weight"].width
            out.append((n_in, net.tensors[lay.input].fixed.width, w_bits))
    return out


@dataclass(frozen=True)
class DelayModel:
    """delay_ns ≈ c0 + c1 · Σ log2(n_in · in_bits · weight_bits), with its calibration error."""

    c0: float
    c1: float
    rel_error_loo: float
    points: int

    def predict_terms(self, terms) -> torch.Tensor:
        """Differentiable: ``terms`` are (n_in, in_bits, weight_bits) of each layer, any of them
        a tensor (real-valued bit widths during training)."""
        total = torch.zeros((), dtype=torch.float64)
        for n_in, b_in, b_w in terms:
            prod = torch.as_tensor(n_in, dtype=torch.float64) * b_in * b_w
            total = total + torch.log2(prod)
        return self.c0 + self.c1 * total

    def predict(self, net: QNet) -> float:
        return float(self.predict_terms(layer_terms(net)))


def calibrate(nets: list[QNet]) -> DelayModel:
    """Fit the model to alkaid's delay estimate of each network; leave-one-out error."""
    if len(nets) < 3:
        raise ConfigError(f"delay model calibration needs at least 3 networks, got {len(nets)}")
    x = np.array([[1.0, sum(math.log2(n * b * w) for n, b, w in layer_terms(net))] for net in nets])
    y = np.array([alkaid_delay_ns(net) for net in nets])
    errs = []
    for i in range(len(nets)):
        keep = np.arange(len(nets)) != i
        c = np.linalg.lstsq(x[keep], y[keep], rcond=None)[0]
        errs.append(abs(x[i] @ c - y[i]) / y[i])
    c0, c1 = np.linalg.lstsq(x, y, rcond=None)[0]
    return DelayModel(float(c0), float(c1), float(np.mean(errs)), len(nets))


def calibration_networks(n: int = 40, seed: int = 0) -> list[QNet]:
    """Random networks of the co-design shape: 18-50 inputs, 4-16 hidden, 4-14 input bits, 4-10
    weight bits per layer, weights from initialization scale up to the format's range (trained
    networks use more of it than freshly initialized ones)."""
    from l1forge.offline.network import QuantMLP, QuantMLPConfig

    rng = np.random.default_rng(seed)
    nets = []
    for k in range(n):
        n_in = int(rng.choice([18, 32, 50]))
        hidden, bits = int(rng.integers(4, 17)), int(rng.integers(4, 15))
        net = QuantMLP(n_in, QuantMLPConfig(hidden=hidden), seed=k)
        scale = float(np.exp(rng.uniform(0.0, np.log(2 * n_in**0.5))))
        with torch.no_grad():
            net.frac_bits.copy_(torch.as_tensor(rng.integers(2, 9, 2), dtype=torch.float64))
            net.w0.mul_(scale)
            net.w1.mul_(scale**0.5)
        nets.append(net.export(bits))
    return nets


# Calibrated on `calibration_networks(40, seed=0)` (alkaid 0.8.2 delay estimates 14.1-26.5 ns)
# and the 15 networks `benchmarks/codesign.py` trained for its designs (3 seeds x joint, both
# factorized, reference and a tight-latency joint run; 22.9-32.9 ns): leave-one-out mean
# relative error 8.2 %. Fitted on the random networks alone it underestimated the trained
# ones by 7 % on average (they use more of each weight's range); this fit by 3 %.
# The benchmark refits it on each run's designs and reports both errors.
DEFAULT_DELAY_MODEL = DelayModel(c0=-39.2221, c1=2.9617, rel_error_loo=0.0823, points=55)
