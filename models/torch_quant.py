"""Torch twins of the qnet fixed-point quantizers, with straight-through gradients.

The forward pass equals :func:`l1forge.models.fixed.quantize_real` bit for bit on float64
tensors (scaling by powers of two and floor/round are exact), for the rounding modes TRN,
RND and RND_CONV and the overflow modes WRAP and SAT. The backward pass is the identity inside
the representable range (straight-through estimator). ``frac_bits`` may also carry a gradient,
HGQ style: the rounding error is treated as uniform noise of width 2**-frac_bits.
"""

from __future__ import annotations

import torch

from l1forge.errors import DataFormatError
from l1forge.models.fixed import Fixed

TORCH_ROUNDING = ("TRN", "RND", "RND_CONV")
TORCH_OVERFLOW = ("WRAP", "SAT")


def _round(y: torch.Tensor, rounding: str) -> torch.Tensor:
    if rounding == "TRN":
        return torch.floor(y)
    if rounding == "RND":
        return torch.floor(y + 0.5)  # exact for |y| < 2**52
    if rounding == "RND_CONV":
        return torch.round(y)  # half to even, as numpy.rint
    raise DataFormatError(f"torch quantizer supports rounding {TORCH_ROUNDING}, got {rounding!r}")


def quantize_int(x: torch.Tensor, fmt: Fixed, rounding: str = "TRN", overflow: str = "WRAP"):
    """Integers (as float64 values) of ``x`` in ``fmt``; no gradient."""
    q = _round(x.detach() * 2.0**fmt.frac_bits, rounding)
    lo, hi = float(fmt.min_int), float(fmt.max_int)
    if overflow == "SAT":
        return q.clamp(lo, hi)
    if overflow == "WRAP":
        return torch.remainder(q - lo, float(1 << fmt.width)) + lo
    raise DataFormatError(f"torch quantizer supports overflow {TORCH_OVERFLOW}, got {overflow!r}")


def quantize_ste(
    x: torch.Tensor,
    fmt: Fixed,
    rounding: str = "TRN",
    overflow: str = "SAT",
    frac_bits_param: torch.Tensor | None = None,
) -> torch.Tensor:
    """Real values of ``x`` quantized to ``fmt``; identity gradient inside the range.

    With ``frac_bits_param`` (a real-valued tensor whose rounded value is ``fmt.frac_bits``),
    it also receives d(error)/d(frac_bits) = -ln2 * error, as in HGQ (arXiv:2405.00645).
    """
    q = quantize_int(x, fmt, rounding, overflow) * 2.0**-fmt.frac_bits
    lo, hi = fmt.min_int * fmt.lsb, fmt.max_int * fmt.lsb
    inside = ((x >= lo) & (x <= hi)).to(x.dtype)
    surrogate = x * inside
    if frac_bits_param is not None:
        err = (q - x).detach()
        surrogate = surrogate + err * torch.exp2(fmt.frac_bits - frac_bits_param)
    # forward: exactly q (s - s.detach() is exactly zero); backward: d surrogate
    return q + (surrogate - surrogate.detach())


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()
