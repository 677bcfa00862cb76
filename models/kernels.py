"""Compiled element-wise kernels of the emulator: one pass per fused chain of layers.

A kernel computes, for every element of a (N, M) array ``x``, ``v = x * a[j] + b[j]`` (the
per-feature head: a scale or affine op, a dense layer's bias, or nothing) followed by up to
``MAX_STAGES`` re-quantizations, each optionally preceded by a ReLU, exactly as
`l1forge.models.fixed.requantize` defines them: multiply by a power of two, round by the
stage's mode, then overflow by its mode (skipped where the bounds prove it cannot happen).
Every value is an integer below 2**52 held in float64 inside the kernel, so each step is exact;
the result is stored as float32 when the final format fits 24 bits, else float64.

Rounding and overflow modes are compile-time constants of each kernel (numba freezes a
closure's variables), so the loops carry no branches on them and vectorize. Kernels are made
once per mode combination and process (`kernel`), and cached on disk by numba across
processes; they release the GIL, so the emulator's chunk threads run them in parallel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numba as nb
import numpy as np

from l1forge.errors import DataFormatError
from l1forge.models.fixed import Fixed

MAX_STAGES = 3
ROUNDING_CODES = {
    "TRN": 0,
    "TRN_ZERO": 1,
    "RND": 2,
    "RND_MIN_INF": 3,
    "RND_ZERO": 4,
    "RND_INF": 5,
    "RND_CONV": 6,
}
NO_ROUNDING = 7  # the stage only moves the binary point right (exact)
OVERFLOW_CODES = {"WRAP": 0, "SAT": 1, "SAT_SYM": 2, "SAT_ZERO": 3}
NO_OVERFLOW = 4  # proven in range
FLOAT32_INT_LIMIT = 2**24


@nb.njit(inline="always")
def _round(y: float, mode: int) -> float:
    if mode == 0:
        return np.floor(y)
    if mode == 1:
        return np.trunc(y)
    if mode == 2:
        return np.floor(y + 0.5)  # exact: y has at most 52 significant bits above its lowest
    if mode == 3:
        return np.ceil(y - 0.5)
    if mode == 6:
        return np.rint(y)
    if mode == 7:
        return y
    fl = np.floor(y)
    frac = y - fl
    if frac != 0.5:
        return fl + 1.0 if frac > 0.5 else fl
    if mode == 4:  # RND_ZERO: ties towards zero
        return fl if y >= 0 else fl + 1.0
    return fl + 1.0 if y >= 0 else fl  # RND_INF: ties away from zero


@nb.njit(inline="always")
def _overflow(q: float, mode: int, lo: float, hi: float, span: float, inv_span: float) -> float:
    if mode == 4:
        return q
    if mode == 0:
        r = q - lo
        return r - np.floor(r * inv_span) * span + lo  # inv_span = 1 / span: a power of two
    if mode == 3:
        return 0.0 if (q < lo or q > hi) else q
    return min(max(q, lo), hi)  # SAT, and SAT_SYM with its symmetric lo


@dataclass(frozen=True)
class Stage:
    """One re-quantization: optional ReLU first, then ``v * mult``, round, overflow."""

    relu: bool
    mult: float  # 2**-shift (or 2**k with k >= 0: no rounding)
    rounding: int
    overflow: int
    lo: float
    hi: float
    span: float

    @property
    def key(self) -> tuple[bool, int, int]:
        return (self.relu, self.rounding, self.overflow)


def stage(
    src_frac: int,
    dst: Fixed,
    rounding: str,
    overflow: str,
    bounds: tuple[float, float],
    *,
    relu: bool = False,
) -> Stage:
    """The stage of ``requantize(q, src_frac, dst, rounding, overflow, bounds=bounds)`` (with a
    ReLU first when ``relu``; ``bounds`` are then those of the ReLU's output)."""
    if rounding not in ROUNDING_CODES or overflow not in OVERFLOW_CODES:
        raise DataFormatError(f"unknown rounding or overflow mode {rounding!r}/{overflow!r}")
    shift = src_frac - dst.frac_bits
    rnd = ROUNDING_CODES[rounding] if shift > 0 else NO_ROUNDING
    lo, hi = float(dst.min_int), float(dst.max_int)
    ovf = OVERFLOW_CODES[overflow]
    blo, bhi = bounds[0] * 2.0**-shift - 1.0, bounds[1] * 2.0**-shift + 1.0
    if blo >= lo and bhi <= hi:
        ovf = NO_OVERFLOW
    if overflow == "SAT_SYM" and dst.signed:
        lo = -hi
    return Stage(relu, 2.0**-shift, rnd, ovf, lo, hi, float(1 << dst.width))


@functools.cache
def kernel(keys: tuple[tuple[bool, int, int], ...], checked: bool = False) -> Callable:
    """The compiled kernel ``k(x, a, b, params, lim, out)`` for stages with these (relu,
    rounding, overflow) codes; ``params`` is (MAX_STAGES, 5): mult, lo, hi, span, 1/span per
    stage. It returns the number of elements of ``x`` outside ``lim`` (lo, hi) when
    ``checked`` (the network input's range, checked in the pass that reads it), else 0."""
    if not 0 <= len(keys) <= MAX_STAGES:
        raise DataFormatError(f"a fused kernel takes 0..{MAX_STAGES} stages, got {len(keys)}")
    pad = keys + ((False, NO_ROUNDING, NO_OVERFLOW),) * (MAX_STAGES - len(keys))
    n_stages = len(keys)
    (r1, m1, o1), (r2, m2, o2), (r3, m3, o3) = pad

    @nb.njit(cache=True, nogil=True)
    def fused(x, a, b, p, lim, out):  # pragma: no cover - compiled
        # the parameters in locals: loads the compiler can hoist out of the loops
        k1, lo1, hi1, sp1, is1 = p[0, 0], p[0, 1], p[0, 2], p[0, 3], p[0, 4]
        k2, lo2, hi2, sp2, is2 = p[1, 0], p[1, 1], p[1, 2], p[1, 3], p[1, 4]
        k3, lo3, hi3, sp3, is3 = p[2, 0], p[2, 1], p[2, 2], p[2, 3], p[2, 4]
        xlo, xhi = lim[0], lim[1]
        n, m = x.shape
        outside = 0
        for i in range(n):
            for j in range(m):
                xv = np.float64(x[i, j])
                if checked:
                    outside += (xv < xlo) | (xv > xhi)
                v = xv * a[j] + b[j]
                if n_stages >= 1:
                    if r1:
                        v = max(v, 0.0)
                    v = _overflow(_round(v * k1, m1), o1, lo1, hi1, sp1, is1)
                if n_stages >= 2:
                    if r2:
                        v = max(v, 0.0)
                    v = _overflow(_round(v * k2, m2), o2, lo2, hi2, sp2, is2)
                if n_stages >= 3:
                    if r3:
                        v = max(v, 0.0)
                    v = _overflow(_round(v * k3, m3), o3, lo3, hi3, sp3, is3)
                out[i, j] = v
        return outside

    return fused


class Fused:
    """A compiled chain: ``fn(x)`` returns the re-quantized integers (float32 or float64).

    With ``check`` (an input format and an error message), the pass also counts the input
    values outside that format, and raises DataFormatError with the message if there are any.
    """

    def __init__(
        self,
        a: np.ndarray,
        b: np.ndarray,
        stages: list[Stage],
        out_fmt: Fixed,
        check: tuple[Fixed, str] | None = None,
    ):
        self.a = np.ascontiguousarray(a, dtype=np.float64)
        self.b = np.ascontiguousarray(b, dtype=np.float64)
        self.stages = stages
        self.params = np.zeros((MAX_STAGES, 5))
        for k, s in enumerate(stages):
            self.params[k] = (s.mult, s.lo, s.hi, s.span, 1.0 / s.span)
        narrow = max(abs(out_fmt.min_int), abs(out_fmt.max_int)) <= FLOAT32_INT_LIMIT
        self.dtype = np.float32 if narrow else np.float64
        self._k = kernel(tuple(s.key for s in stages), check is not None)
        fmt, self._message = check if check is not None else (None, "")
        lim = [0, 0] if fmt is None else [fmt.min_int, fmt.max_int]  # unread when unchecked
        self._lim = np.array(lim, dtype=np.float64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # a new array: writing into ``x`` measured 25 % slower (the loop no longer vectorizes)
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        out = np.empty(x.shape, dtype=self.dtype)
        if self._k(x, self.a, self.b, self.params, self._lim, out):
            raise DataFormatError(self._message)
        return out
