"""HGQ-style learned bit widths for the anomaly trigger's student network.

A quantization-aware fine-tune, in torch, of an exported student IR (scale -> quantize -> dense
-> relu -> dense -> quantize, as `l1forge train ad` exports the CICADA-style student): the
weights and biases of each dense layer stay trainable, and so does each layer's number of
fractional bits (HGQ, arXiv:2405.00645: the rounding error's gradient reaches the bit width
through `torch_quant.quantize_ste`). The loss is the distillation error plus a resource
penalty: the layer's EBOPs (input width times weight width, summed over the multiplications),
the quantity `offline.lut_model` turns into LUTs, relative to the starting network's.

The forward pass in float64 equals the qnet emulator bit for bit on the exported IR (every
intermediate format is the IR's), so what is trained is what the firmware computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from l1forge.errors import DataFormatError
from l1forge.models.build import NetBuilder
from l1forge.models.fixed import Fixed
from l1forge.models.qnet import Layer, QNet
from l1forge.models.torch_quant import quantize_int, quantize_ste

STUDENT_OPS = ("scale", "quantize", "dense", "relu", "dense", "quantize")


@dataclass(frozen=True)
class HGQConfig:
    """Bounds of the learned fractional bits (they start at the network's own); weights keep
    ``weight_int_bits`` integer bits (including the sign, as ap_fixed<W, I>), biases
    ``bias_int_bits`` and the fractional bits of the network they start from."""

    weight_int_bits: int = 3
    bias_int_bits: int = 6
    min_frac_bits: int = 0
    max_frac_bits: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.min_frac_bits <= self.max_frac_bits <= 16:
            raise DataFormatError("hgq: need 0 <= min_frac_bits <= max_frac_bits <= 16")
        if self.weight_int_bits < 1 or self.bias_int_bits < 1:
            raise DataFormatError("hgq: integer bits include the sign: at least 1")


def _student_layers(ir: QNet) -> tuple[Layer, ...]:
    ops = tuple(lay.op for lay in ir.layers)
    if ops != STUDENT_OPS:
        raise DataFormatError(
            f"{ir.name}: HGQ fine-tuning takes a student IR with layers {STUDENT_OPS}, got {ops}"
        )
    return ir.layers


class HGQStudent(nn.Module):
    """The student of ``ir`` with trainable weights and per-layer fractional bits."""

    def __init__(self, ir: QNet, cfg: HGQConfig | None = None):
        super().__init__()
        self.cfg = cfg or HGQConfig()
        self.ir = ir
        scale, x_q, d0, relu, d1, out = _student_layers(ir)
        self.scale_layer, self.d0_name, self.d1_name = scale, d0.name, d1.name
        self.in_fixed = ir.tensors[x_q.output].fixed
        self.x_q_layer, self.relu_layer, self.out_layer = x_q, relu, out
        self.x_spec = ir.input_specs[0]
        self.act_fixed = ir.tensors[relu.output].fixed
        self.out_fixed = ir.tensors[out.output].fixed

        def real(lay: Layer, key: str) -> torch.Tensor:
            f = lay.array_formats[key]
            return torch.tensor(lay.arrays[key] * f.lsb, dtype=torch.float64)

        self.w0, self.b0 = nn.Parameter(real(d0, "weight")), nn.Parameter(real(d0, "bias"))
        self.w1, self.b1 = nn.Parameter(real(d1, "weight")), nn.Parameter(real(d1, "bias"))
        lo, hi = self.cfg.min_frac_bits, self.cfg.max_frac_bits
        start = [min(max(lay.array_formats["weight"].frac_bits, lo), hi) for lay in (d0, d1)]
        self.frac_bits = nn.Parameter(torch.tensor(start, dtype=torch.float64))
        # biases cost adders, not multipliers: their fractional bits stay those of ``ir``
        self.bias_frac_bits = tuple(lay.array_formats["bias"].frac_bits for lay in (d0, d1))

    # ---- formats ----

    def layer_formats(self) -> list[tuple[Fixed, Fixed]]:
        """(weight, bias) formats of each dense layer at the current rounded bit widths."""
        c = self.cfg
        out = []
        fbs = self.frac_bits.detach().round().clamp(c.min_frac_bits, c.max_frac_bits)
        for fb, bf in zip(fbs.tolist(), self.bias_frac_bits, strict=True):
            f = int(fb)
            out.append(
                (
                    Fixed(True, c.weight_int_bits + f, c.weight_int_bits),
                    Fixed(True, c.bias_int_bits + bf, c.bias_int_bits),
                )
            )
        return out

    def quantized_inputs(self, x: np.ndarray) -> torch.Tensor:
        """The network's first quantized tensor (x_q) of hardware integers ``x``: no weights
        act before it, so it is computed once per event."""
        lay = self.scale_layer
        off = lay.arrays["offset"] * lay.array_formats["offset"].lsb
        xs = (
            torch.as_tensor(np.asarray(x), dtype=torch.float64) * self.x_spec.fixed.lsb
            - torch.as_tensor(off, dtype=torch.float64)
        ) * torch.exp2(-torch.as_tensor(lay.arrays["shift"], dtype=torch.float64))
        q = self.x_q_layer
        return quantize_ste(xs, self.in_fixed, q.rounding, q.overflow)

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        """(N,) real scores of quantized inputs ``x_q`` (from `quantized_inputs`)."""
        (wf0, bf0), (wf1, bf1) = self.layer_formats()
        fb = self.frac_bits
        w0 = quantize_ste(self.w0, wf0, "RND_CONV", "SAT", fb[0])
        b0 = quantize_ste(self.b0, bf0, "RND_CONV", "SAT")
        r = self.relu_layer
        hid = quantize_ste(torch.relu(x_q @ w0 + b0), self.act_fixed, r.rounding, r.overflow)
        w1 = quantize_ste(self.w1, wf1, "RND_CONV", "SAT", fb[1])
        b1 = quantize_ste(self.b1, bf1, "RND_CONV", "SAT")
        o = self.out_layer
        return quantize_ste(hid @ w1 + b1, self.out_fixed, o.rounding, o.overflow)[:, 0]

    def ebops(self, rounded: bool = False) -> torch.Tensor:
        """Σ input width × weight width over the multiplications: differentiable in the bits,
        or (``rounded``) at the bit widths the exported network has."""
        c = self.cfg
        fb = self.frac_bits.detach().round() if rounded else self.frac_bits
        wbits = c.weight_int_bits + fb.clamp(c.min_frac_bits, c.max_frac_bits)
        n_in, h = self.w0.shape
        return (
            n_in * h * self.in_fixed.width * wbits[0]
            + h * self.w1.shape[1] * self.act_fixed.width * wbits[1]
        )

    # ---- export ----

    def to_qnet(self, name: str | None = None, **provenance) -> QNet:
        """The IR of the current network (formats of every dense output exact, as exported)."""
        (wf0, bf0), (wf1, bf1) = self.layer_formats()
        ir, s = self.ir, self.scale_layer

        def ints(p: torch.Tensor, f: Fixed) -> np.ndarray:
            return quantize_int(p, f, "RND_CONV", "SAT").numpy().astype(np.int64)

        x = self.x_spec
        b = NetBuilder(name or ir.name, x.size, x.fixed, input_name=x.name)
        b.scale(
            s.name,
            s.arrays["offset"],
            s.array_formats["offset"],
            s.arrays["shift"],
            rounding=s.rounding,
            overflow=s.overflow,
        )
        b.quantize(
            self.x_q_layer.name, self.in_fixed, self.x_q_layer.rounding, self.x_q_layer.overflow
        )
        b.dense(self.d0_name, ints(self.w0, wf0), wf0, ints(self.b0, bf0), bf0)
        b.relu(
            self.relu_layer.name, self.act_fixed, self.relu_layer.rounding, self.relu_layer.overflow
        )
        b.dense(self.d1_name, ints(self.w1, wf1), wf1, ints(self.b1, bf1), bf1)
        b.quantize(
            self.out_layer.name, self.out_fixed, self.out_layer.rounding, self.out_layer.overflow
        )
        bits = [wf0.width, wf1.width]
        return b.build(provenance={**dict(ir.provenance), "hgq_weight_bits": bits, **provenance})


@dataclass(frozen=True)
class FineTuneResult:
    ir: QNet
    weight_bits: tuple[int, ...]
    ebops: float
    ebops_start: float
    history: tuple[tuple[float, float, float], ...]  # per epoch: mse, ebops, validation mse


def fine_tune(
    ir: QNet,
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    penalty: float,
    epochs: int = 10,
    batch_size: int = 2048,
    lr: float = 1e-3,
    bits_lr: float = 0.05,
    seed: int = 0,
    cfg: HGQConfig | None = None,
    progress: bool = True,
) -> FineTuneResult:
    """Fine-tune ``ir`` on targets ``y`` (the teacher's score in the units of the output) with
    loss ``mse + penalty * EBOPs / EBOPs(start)``; returns the exported network."""
    from tqdm import tqdm

    if penalty < 0:
        raise DataFormatError(f"hgq: penalty must be >= 0, got {penalty}")
    torch.manual_seed(seed)
    net = HGQStudent(ir, cfg)
    xq_fit, xq_val = net.quantized_inputs(x_fit), net.quantized_inputs(x_val)
    t_fit = torch.as_tensor(np.asarray(y_fit, dtype=np.float64))
    t_val = torch.as_tensor(np.asarray(y_val, dtype=np.float64))
    e0 = float(net.ebops(rounded=True))
    weights = [net.w0, net.b0, net.w1, net.b1]
    opt = torch.optim.Adam(
        [{"params": weights, "lr": lr}, {"params": [net.frac_bits], "lr": bits_lr}]
    )
    gen = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(epochs), desc=f"HGQ fine-tune (penalty {penalty:g})", disable=not progress)
    for _ in bar:
        perm = torch.randperm(len(xq_fit), generator=gen)
        total = 0.0
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            mse = torch.mean((net(xq_fit[idx]) - t_fit[idx]) ** 2)
            loss = mse + penalty * net.ebops() / e0
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                net.frac_bits.clamp_(net.cfg.min_frac_bits, net.cfg.max_frac_bits)
            total += float(mse.detach()) * len(idx)
        with torch.no_grad():
            val = float(torch.mean((net(xq_val) - t_val) ** 2)) if len(xq_val) else float("nan")
        history.append((total / len(perm), float(net.ebops().detach()), val))
        bar.set_postfix(
            mse=f"{history[-1][0]:.4f}",
            val=f"{val:.4f}",
            bits=[w.width for w, _ in net.layer_formats()],
        )
    fmts = net.layer_formats()
    return FineTuneResult(
        ir=net.to_qnet(hgq_penalty=penalty),
        weight_bits=tuple(w.width for w, _ in fmts),
        ebops=float(net.ebops(rounded=True)),
        ebops_start=e0,
        history=tuple(history),
    )
