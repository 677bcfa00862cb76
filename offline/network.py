"""The co-design trigger network: a quantized MLP in torch that exports to the qnet IR.

Cells (ADC counts of B bits) -> scale by 2**-(B - input_scale_bits), i.e. energy as a fraction
of the ADC full scale times 2**input_scale_bits whatever B is -> dense -> ReLU (re-quantized,
TRN/SAT) -> dense -> (energy / energy_scale, photon-vs-π0 logit). Weights and biases are
quantized with ap_fixed RND_CONV/SAT; each dense layer's fractional bits are learnable
(HGQ style). The forward pass in float64 equals the qnet emulator bit for bit on the exported IR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from l1forge.errors import ConfigError
from l1forge.models.build import NetBuilder
from l1forge.models.fixed import Fixed
from l1forge.models.qnet import QNet
from l1forge.models.torch_quant import quantize_int, quantize_ste


@dataclass(frozen=True)
class QuantMLPConfig:
    """Network shape and fixed-point choices; bits are ap_fixed widths."""

    hidden: int = 16
    input_scale_bits: int = 6
    weight_int_bits: int = 2
    weight_frac_bits: float = 6.0
    bias_int_bits: int = 6
    act_width: int = 10
    act_int_bits: int = 6
    learn_bits: bool = True
    min_frac_bits: int = 1
    max_frac_bits: int = 14
    energy_scale_gev: float = 16.0

    def __post_init__(self) -> None:
        if not 1 <= self.hidden <= 256:
            raise ConfigError(f"network.hidden: must be in [1, 256], got {self.hidden}")
        if not 0 <= self.input_scale_bits <= 20:
            raise ConfigError(
                f"network.input_scale_bits: must be in [0, 20], got {self.input_scale_bits}"
            )
        if not self.min_frac_bits <= self.weight_frac_bits <= self.max_frac_bits:
            raise ConfigError("network.weight_frac_bits: outside [min_frac_bits, max_frac_bits]")
        if not 2 <= self.act_width <= 24 or not 0 <= self.act_int_bits <= self.act_width:
            raise ConfigError("network.act_width/act_int_bits: need 2 <= width <= 24")
        if self.energy_scale_gev <= 0:
            raise ConfigError("network.energy_scale_gev: must be positive")

    @property
    def act_fixed(self) -> Fixed:
        return Fixed(False, self.act_width, self.act_int_bits)


class QuantMLP(nn.Module):
    """Two-layer quantized MLP reading ``n_in`` ADC counts of ``input_bits`` bits."""

    def __init__(self, n_in: int, cfg: QuantMLPConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.n_in = n_in
        gen = torch.Generator().manual_seed(seed)
        h = cfg.hidden
        self.w0 = nn.Parameter(torch.randn(n_in, h, generator=gen, dtype=torch.float64) / n_in**0.5)
        self.b0 = nn.Parameter(torch.zeros(h, dtype=torch.float64))
        self.w1 = nn.Parameter(torch.randn(h, 2, generator=gen, dtype=torch.float64) / h**0.5)
        self.b1 = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.frac_bits = nn.Parameter(
            torch.full((2,), float(cfg.weight_frac_bits), dtype=torch.float64),
            requires_grad=cfg.learn_bits,
        )

    def layer_formats(self) -> list[tuple[Fixed, Fixed]]:
        """(weight, bias) formats of each dense layer at the current (rounded) bit widths."""
        c = self.cfg
        out = []
        for fb in self.frac_bits.detach().round().clamp(c.min_frac_bits, c.max_frac_bits):
            f = int(fb)
            out.append(
                (
                    Fixed(True, c.weight_int_bits + f, c.weight_int_bits),
                    Fixed(True, c.bias_int_bits + f, c.bias_int_bits),
                )
            )
        return out

    def forward(self, counts: torch.Tensor, input_bits: torch.Tensor | int) -> torch.Tensor:
        """(N, 2) real outputs for float64 ADC counts (N, n_in) of ``input_bits`` bits.

        With an integer ``input_bits`` and integer counts the result is bit-exact; a real
        tensor ``input_bits`` (training) lets gradients reach the readout bit width.
        """
        (wf0, bf0), (wf1, bf1) = self.layer_formats()
        fb = self.frac_bits if self.cfg.learn_bits else None
        shift = torch.as_tensor(input_bits, dtype=torch.float64) - self.cfg.input_scale_bits
        x = counts * torch.exp2(-shift)
        w0 = quantize_ste(self.w0, wf0, "RND_CONV", "SAT", None if fb is None else fb[0])
        b0 = quantize_ste(self.b0, bf0, "RND_CONV", "SAT", None if fb is None else fb[0])
        acc = x @ w0 + b0
        hid = quantize_ste(torch.relu(acc), self.cfg.act_fixed, "TRN", "SAT")
        w1 = quantize_ste(self.w1, wf1, "RND_CONV", "SAT", None if fb is None else fb[1])
        b1 = quantize_ste(self.b1, bf1, "RND_CONV", "SAT", None if fb is None else fb[1])
        return hid @ w1 + b1

    def ebops(self, input_bits: torch.Tensor | float) -> torch.Tensor:
        """Effective bit operations: sum over multiplications of operand bit widths' product."""
        c = self.cfg
        wbits = c.weight_int_bits + self.frac_bits.clamp(c.min_frac_bits, c.max_frac_bits)
        in_bits = torch.as_tensor(input_bits, dtype=torch.float64)
        return self.n_in * c.hidden * in_bits * wbits[0] + c.hidden * 2 * c.act_width * wbits[1]

    def delay_terms(
        self, input_bits: torch.Tensor | float
    ) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(inputs, input width, weight width) of each dense layer, as the exported IR has them
        (the scaled input is ``max(input_bits, input_scale_bits)`` wide), differentiable in the
        bit widths: the terms of :class:`l1forge.offline.latency_model.DelayModel`."""
        c = self.cfg
        wbits = c.weight_int_bits + self.frac_bits.clamp(c.min_frac_bits, c.max_frac_bits)
        in_bits = torch.as_tensor(input_bits, dtype=torch.float64).clamp(min=c.input_scale_bits)
        act = torch.as_tensor(float(c.act_width), dtype=torch.float64)
        return [(self.n_in, in_bits, wbits[0]), (c.hidden, act, wbits[1])]

    def output_frac_bits(self) -> int:
        (_, _), (wf1, bf1) = self.layer_formats()
        return max(self.cfg.act_fixed.frac_bits + wf1.frac_bits, bf1.frac_bits)

    def export(self, input_bits: int, name: str = "codesign_net") -> QNet:
        """The network as a qnet IR taking unsigned ``input_bits``-bit ADC counts."""
        (wf0, bf0), (wf1, bf1) = self.layer_formats()
        b = NetBuilder(name, self.n_in, Fixed(False, input_bits, input_bits))
        b.scale(
            "x_scaled",
            np.zeros(self.n_in, dtype=np.int64),
            Fixed(True, 2, 2),
            np.full(self.n_in, input_bits - self.cfg.input_scale_bits, dtype=np.int64),
        )
        ints = lambda p, f: quantize_int(p, f, "RND_CONV", "SAT").numpy().astype(np.int64)  # noqa: E731
        b.dense("dense0", ints(self.w0, wf0), wf0, ints(self.b0, bf0), bf0)
        b.relu("relu0", self.cfg.act_fixed, "TRN", "SAT")
        b.dense("dense1", ints(self.w1, wf1), wf1, ints(self.b1, bf1), bf1)
        return b.build(
            outputs=("dense1",),
            provenance={
                "producer": "l1forge.offline.network.QuantMLP",
                "outputs": ["energy / energy_scale_gev", "photon logit"],
                "energy_scale_gev": self.cfg.energy_scale_gev,
            },
        )
