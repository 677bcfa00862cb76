"""Fixed-point formats and the exact re-quantization rules of the qnet IR.

A value is stored as an integer ``q`` in a format; its real value is ``q * 2**-frac_bits``.
Formats follow the ap_fixed convention used by HLS tools: ``width`` bits in all, of which
``int_bits`` are above the binary point, the sign bit included when ``signed``.
Rounding and overflow modes carry the same names as ap_fixed's quantization and overflow modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from l1forge.errors import DataFormatError

ROUNDING_MODES = ("TRN", "TRN_ZERO", "RND", "RND_ZERO", "RND_MIN_INF", "RND_INF", "RND_CONV")
OVERFLOW_MODES = ("WRAP", "SAT", "SAT_ZERO", "SAT_SYM")

# Integers below this magnitude stay exact in float64 through every re-quantization step
# (rounding adds one half before the floor); the emulator relies on it.
FLOAT64_EXACT = 2**52


@dataclass(frozen=True)
class Fixed:
    """A fixed-point format: ap_fixed<width, int_bits>, or ap_ufixed<...> when unsigned."""

    signed: bool
    width: int
    int_bits: int

    def __post_init__(self) -> None:
        if not isinstance(self.width, int) or self.width < 1 or self.width > 62:
            raise DataFormatError(f"fixed-point width must be an integer 1..62, got {self.width}")
        if not isinstance(self.int_bits, int):
            raise DataFormatError(f"fixed-point int_bits must be an integer, got {self.int_bits}")
        if self.signed and self.width < 2:
            raise DataFormatError("a signed fixed-point format needs at least 2 bits")

    @property
    def frac_bits(self) -> int:
        return self.width - self.int_bits

    @property
    def min_int(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max_int(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def lsb(self) -> float:
        return 2.0**-self.frac_bits

    def to_float(self, q: np.ndarray) -> np.ndarray:
        """Real values of integers stored in this format (exact in float64)."""
        return np.asarray(q, dtype=np.float64) * self.lsb

    def contains(self, q: np.ndarray) -> bool:
        q = np.asarray(q)
        return bool(q.size == 0 or (q.min() >= self.min_int and q.max() <= self.max_int))

    def hls_type(self) -> str:
        kind = "ap_fixed" if self.signed else "ap_ufixed"
        return f"{kind}<{self.width},{self.int_bits}>"

    def to_json(self) -> dict[str, Any]:
        return {"signed": self.signed, "width": self.width, "int_bits": self.int_bits}

    @classmethod
    def from_json(cls, d: Any, where: str = "format") -> Fixed:
        if not isinstance(d, dict) or set(d) != {"signed", "width", "int_bits"}:
            raise DataFormatError(f"{where}: expected keys signed, width, int_bits; got {d!r}")
        if not isinstance(d["signed"], bool):
            raise DataFormatError(f"{where}.signed must be true or false, got {d['signed']!r}")
        return cls(signed=d["signed"], width=d["width"], int_bits=d["int_bits"])

    @classmethod
    def covering(cls, lo: int, hi: int, frac_bits: int) -> Fixed:
        """The narrowest format with ``frac_bits`` that holds every integer in [lo, hi]."""
        signed = lo < 0
        width = 2 if signed else 1
        while True:
            f = cls(signed, width, width - frac_bits)
            if f.min_int <= lo and hi <= f.max_int:
                return f
            width += 1


def _overflow(q: np.ndarray, fmt: Fixed, overflow: str) -> np.ndarray:
    lo, hi = float(fmt.min_int), float(fmt.max_int)
    if overflow == "WRAP":
        span = float(1 << fmt.width)
        return np.mod(q - lo, span) + lo
    if overflow == "SAT":
        return np.clip(q, lo, hi)
    if overflow == "SAT_SYM":
        return np.clip(q, -hi if fmt.signed else lo, hi)
    if overflow == "SAT_ZERO":
        return np.where((q < lo) | (q > hi), 0.0, q)
    raise DataFormatError(f"unknown overflow mode {overflow!r}; known: {OVERFLOW_MODES}")


def requantize(
    q: np.ndarray,
    src_frac_bits: int,
    dst: Fixed,
    rounding: str = "TRN",
    overflow: str = "WRAP",
    *,
    bounds: tuple[int, int] | None = None,
) -> np.ndarray:
    """Re-express integers with ``src_frac_bits`` in format ``dst``, as ap_fixed assignment does.

    Works on integer-valued float64 arrays (all magnitudes below 2**52) and returns float64.
    ``bounds``, if given, are proven limits (lo, hi) on ``q``: overflow handling is skipped when
    the result cannot leave ``dst``. The input is never modified; it may be returned as it is.
    """
    q = np.asarray(q, dtype=np.float64)
    shift = src_frac_bits - dst.frac_bits
    if shift > 0:
        y = np.multiply(q, 2.0**-shift)  # exact: a power-of-two scale
        if rounding == "TRN":
            np.floor(y, out=y)
        elif rounding == "RND_CONV":
            np.rint(y, out=y)
        elif rounding == "RND":
            y += 0.5  # exact: y has at most 52 significant bits above its lowest set bit
            np.floor(y, out=y)
        else:
            y = _round_real(y, rounding)
    elif shift < 0:
        y = np.multiply(q, float(1 << -shift))
    else:
        y = q
    if bounds is not None:
        lo, hi = bounds[0] * 2.0**-shift - 1.0, bounds[1] * 2.0**-shift + 1.0
        if lo >= dst.min_int and hi <= dst.max_int:
            return y
    if y is q:
        y = q.copy()
    return _overflow_inplace(y, dst, overflow)


def _overflow_inplace(y: np.ndarray, fmt: Fixed, overflow: str) -> np.ndarray:
    lo, hi = float(fmt.min_int), float(fmt.max_int)
    if overflow == "WRAP":
        y -= lo
        np.mod(y, float(1 << fmt.width), out=y)
        y += lo
        return y
    if overflow == "SAT":
        return np.clip(y, lo, hi, out=y)
    if overflow == "SAT_SYM":
        return np.clip(y, -hi if fmt.signed else lo, hi, out=y)
    return _overflow(y, fmt, overflow)


def quantize_real(
    x: np.ndarray, dst: Fixed, rounding: str = "TRN", overflow: str = "WRAP"
) -> np.ndarray:
    """Quantize real numbers to integers of format ``dst`` (float64 result, integer-valued).

    Exact for any finite float64 input: scaling by a power of two is exact, and so is the
    rounding decision below.
    """
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise DataFormatError("cannot quantize NaN or infinite values")
    return _overflow(_round_real(x * 2.0**dst.frac_bits, rounding), dst, overflow)


def _round_real(y: np.ndarray, rounding: str) -> np.ndarray:
    """Round already-scaled real values to integers; exact for any float64 input."""
    if rounding == "TRN":
        return np.floor(y)
    if rounding == "TRN_ZERO":
        return np.trunc(y)
    if rounding == "RND":
        return _half(y, np.floor(y), "up")
    if rounding == "RND_MIN_INF":
        return _half(y, np.floor(y), "down")
    if rounding == "RND_ZERO":
        return _half(y, np.floor(y), "zero")
    if rounding == "RND_INF":
        return _half(y, np.floor(y), "inf")
    if rounding == "RND_CONV":
        return np.rint(y)
    raise DataFormatError(f"unknown rounding mode {rounding!r}; known: {ROUNDING_MODES}")


def _half(y: np.ndarray, fl: np.ndarray, tie: str) -> np.ndarray:
    """Round to nearest, deciding exact halves by ``tie`` (y - floor(y) is exact in float64)."""
    frac = y - fl
    up = fl + 1.0
    nearest = np.where(frac > 0.5, up, fl)
    if tie == "up":
        tie_val = up
    elif tie == "down":
        tie_val = fl
    elif tie == "zero":
        tie_val = np.where(y >= 0, fl, up)
    else:
        tie_val = np.where(y >= 0, up, fl)
    return np.where(frac == 0.5, tie_val, nearest)
