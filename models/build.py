"""Building qnet IRs layer by layer, with exact output formats inferred from value ranges.

Exact means no information is lost: the inferred format holds every value the operation can
produce from any input of its input format (interval arithmetic over the actual integer
weights, as bit-exact precision propagation does).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from l1forge.errors import DataFormatError
from l1forge.models.fixed import Fixed
from l1forge.models.qnet import Layer, QNet, TensorSpec


def dense_range(
    src: Fixed, weight: np.ndarray, w_fmt: Fixed, bias: np.ndarray, b_fmt: Fixed
) -> tuple[int, int, int]:
    """(lo, hi, frac_bits) of x @ weight + bias over all x in ``src``, in accumulator integers."""
    frac = max(src.frac_bits + w_fmt.frac_bits, b_fmt.frac_bits)
    w = weight.astype(object) * (1 << (frac - src.frac_bits - w_fmt.frac_bits))
    b = bias.astype(object) * (1 << (frac - b_fmt.frac_bits))
    lo_x, hi_x = src.min_int, src.max_int
    lo = (np.minimum(w * lo_x, w * hi_x).sum(axis=0) + b).min()
    hi = (np.maximum(w * lo_x, w * hi_x).sum(axis=0) + b).max()
    return int(lo), int(hi), frac


def scale_range(
    src: Fixed, offset: np.ndarray, o_fmt: Fixed, shift: np.ndarray
) -> tuple[int, int, int]:
    """(lo, hi, frac_bits) of (x - offset) * 2**-shift over all x in ``src``."""
    base = max(src.frac_bits, o_fmt.frac_bits)
    frac = base + max(int(shift.max()), 0)
    steps = [frac - base - int(s) for s in shift]
    if any(k < 0 for k in steps):
        raise DataFormatError("scale: shift values leave no common binary point")
    mult = [1 << k for k in steps]
    xs = 1 << (base - src.frac_bits)
    off = [int(o) << (base - o_fmt.frac_bits) for o in offset]
    lo = min((src.min_int * xs - o) * m for o, m in zip(off, mult, strict=True))
    hi = max((src.max_int * xs - o) * m for o, m in zip(off, mult, strict=True))
    return lo, hi, frac


def affine_range(
    src: Fixed, mult: np.ndarray, m_fmt: Fixed, add: np.ndarray, a_fmt: Fixed
) -> tuple[int, int, int]:
    """(lo, hi, frac_bits) of x * mult + add (per feature) over all x in ``src``."""
    frac = max(src.frac_bits + m_fmt.frac_bits, a_fmt.frac_bits)
    m = mult.astype(object) * (1 << (frac - src.frac_bits - m_fmt.frac_bits))
    a = add.astype(object) * (1 << (frac - a_fmt.frac_bits))
    lo = (np.minimum(m * src.min_int, m * src.max_int) + a).min()
    hi = (np.maximum(m * src.min_int, m * src.max_int) + a).max()
    return int(lo), int(hi), frac


def sum_squares_range(src: Fixed, size: int) -> tuple[int, int, int]:
    m = max(abs(src.min_int), abs(src.max_int))
    return 0, size * m * m, 2 * src.frac_bits


class NetBuilder:
    """Appends layers to a sequential qnet; a layer's output format is exact unless given."""

    def __init__(self, name: str, input_size: int, input_fixed: Fixed, input_name: str = "x"):
        self.name = name
        self.tensors: dict[str, TensorSpec] = {
            input_name: TensorSpec(input_name, input_size, input_fixed)
        }
        self.layers: list[Layer] = []
        self.inputs = (input_name,)
        self.last = input_name

    @property
    def last_spec(self) -> TensorSpec:
        return self.tensors[self.last]

    def _add(
        self,
        op: str,
        name: str,
        size: int,
        out: Fixed | None,
        bounds: Callable[[], tuple[int, int, int]] | None = None,
        **kw: Any,
    ) -> NetBuilder:
        """Append ``op``; without ``out``, its output is the exact format of ``bounds()``."""
        if name in self.tensors:
            raise DataFormatError(f"layer name {name!r} used twice")
        if out is None:
            if bounds is None:
                raise DataFormatError(f"layer {name!r}: {op} needs an output format")
            out = Fixed.covering(*bounds())
        self.tensors[name] = TensorSpec(name, size, out)
        self.layers.append(Layer(name=name, op=op, input=self.last, output=name, **kw))
        self.last = name
        return self

    def scale(
        self,
        name: str,
        offset: np.ndarray,
        offset_fixed: Fixed,
        shift: np.ndarray,
        out: Fixed | None = None,
        rounding: str = "TRN",
        overflow: str = "WRAP",
    ) -> NetBuilder:
        src = self.last_spec
        offset = np.asarray(offset, dtype=np.int64)
        shift = np.asarray(shift, dtype=np.int64)
        return self._add(
            "scale",
            name,
            src.size,
            out,
            lambda: scale_range(src.fixed, offset, offset_fixed, shift),
            rounding=rounding,
            overflow=overflow,
            arrays={"offset": offset, "shift": shift},
            array_formats={"offset": offset_fixed},
        )

    def affine(
        self,
        name: str,
        mult: np.ndarray,
        mult_fixed: Fixed,
        add: np.ndarray,
        add_fixed: Fixed,
        out: Fixed | None = None,
        rounding: str = "TRN",
        overflow: str = "WRAP",
    ) -> NetBuilder:
        """x * mult + add per feature (a general fixed-point batch normalization)."""
        src = self.last_spec
        mult = np.asarray(mult, dtype=np.int64)
        add = np.asarray(add, dtype=np.int64)
        if mult.shape != (src.size,) or add.shape != (src.size,):
            raise DataFormatError(
                f"{name}: mult {mult.shape} / add {add.shape} need {src.size} entries each"
            )
        return self._add(
            "affine",
            name,
            src.size,
            out,
            lambda: affine_range(src.fixed, mult, mult_fixed, add, add_fixed),
            rounding=rounding,
            overflow=overflow,
            arrays={"mult": mult, "add": add},
            array_formats={"mult": mult_fixed, "add": add_fixed},
        )

    def dense(
        self,
        name: str,
        weight: np.ndarray,
        weight_fixed: Fixed,
        bias: np.ndarray,
        bias_fixed: Fixed,
        out: Fixed | None = None,
        rounding: str = "TRN",
        overflow: str = "WRAP",
    ) -> NetBuilder:
        src = self.last_spec
        weight = np.asarray(weight, dtype=np.int64)
        bias = np.asarray(bias, dtype=np.int64)
        if weight.ndim != 2 or weight.shape[0] != src.size:
            raise DataFormatError(
                f"{name}: weight shape {weight.shape} does not take {src.size} inputs"
            )
        return self._add(
            "dense",
            name,
            weight.shape[1],
            out,
            lambda: dense_range(src.fixed, weight, weight_fixed, bias, bias_fixed),
            rounding=rounding,
            overflow=overflow,
            arrays={"weight": weight, "bias": bias},
            array_formats={"weight": weight_fixed, "bias": bias_fixed},
        )

    def relu(
        self, name: str, out: Fixed, rounding: str = "TRN", overflow: str = "WRAP"
    ) -> NetBuilder:
        return self._add(
            "relu", name, self.last_spec.size, out, rounding=rounding, overflow=overflow
        )

    def quantize(
        self, name: str, out: Fixed, rounding: str = "TRN", overflow: str = "WRAP"
    ) -> NetBuilder:
        return self._add(
            "quantize", name, self.last_spec.size, out, rounding=rounding, overflow=overflow
        )

    def sum_squares(
        self, name: str, out: Fixed | None = None, rounding: str = "TRN", overflow: str = "WRAP"
    ) -> NetBuilder:
        src = self.last_spec
        return self._add(
            "sum_squares",
            name,
            1,
            out,
            lambda: sum_squares_range(src.fixed, src.size),
            rounding=rounding,
            overflow=overflow,
        )

    def build(
        self, outputs: tuple[str, ...] | None = None, provenance: dict[str, Any] | None = None
    ) -> QNet:
        return QNet(
            name=self.name,
            tensors=dict(self.tensors),
            layers=tuple(self.layers),
            inputs=self.inputs,
            outputs=outputs or (self.last,),
            provenance=dict(provenance or {}),
        )


def random_mlp(
    n_in: int = 57,
    hidden: tuple[int, ...] = (16,),
    n_out: int = 3,
    *,
    input_fixed: Fixed | None = None,
    weight_bits: int = 8,
    weight_int_bits: int = 1,
    act_fixed: Fixed | None = None,
    score: bool = False,
    seed: int = 0,
    name: str = "random_mlp",
) -> QNet:
    """A small real qnet with random integer weights: for tests of consumers of the IR."""
    input_fixed = input_fixed or Fixed(True, 16, 16)
    act_fixed = act_fixed or Fixed(False, 8, 4)
    rng = np.random.default_rng(seed)
    w_fmt = Fixed(True, weight_bits, weight_int_bits)
    b = NetBuilder(name, n_in, input_fixed)
    b.quantize("x_q", Fixed(True, 14, 14 - max(0, input_fixed.frac_bits)), "RND_CONV", "SAT")
    sizes = (n_in, *hidden, n_out)
    for i, (a, c) in enumerate(itertools.pairwise(sizes)):
        w = rng.integers(w_fmt.min_int, w_fmt.max_int + 1, size=(a, c))
        bias = rng.integers(w_fmt.min_int, w_fmt.max_int + 1, size=c)
        b.dense(f"dense{i}", w, w_fmt, bias, w_fmt)
        if i < len(sizes) - 2:
            b.relu(f"relu{i}", act_fixed, "RND_CONV", "SAT")
    if score:
        b.quantize("mu", Fixed(True, 12, 6), "TRN", "SAT")
        b.sum_squares("score")
    return b.build(provenance={"producer": "l1forge.models.build.random_mlp", "seed": seed})
