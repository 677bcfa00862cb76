"""An independent, slow reference of the qnet IR semantics in Python integers (no floats)."""

from __future__ import annotations

import numpy as np

from l1forge.models.fixed import Fixed
from l1forge.models.qnet import QNet


def ref_requantize(q: int, src_frac: int, dst: Fixed, rounding: str, overflow: str) -> int:
    shift = src_frac - dst.frac_bits
    if shift <= 0:
        v = q << -shift
    else:
        fl = q >> shift
        rem = q - (fl << shift)
        half = 1 << (shift - 1)
        up = rem > half
        tie = rem == half
        if rounding == "TRN":
            v = fl
        elif rounding == "TRN_ZERO":
            v = fl + (1 if q < 0 and rem else 0)
        elif rounding == "RND":
            v = fl + (1 if up or tie else 0)
        elif rounding == "RND_MIN_INF":
            v = fl + (1 if up else 0)
        elif rounding == "RND_ZERO":
            v = fl + (1 if up or (tie and q < 0) else 0)
        elif rounding == "RND_INF":
            v = fl + (1 if up or (tie and q >= 0) else 0)
        elif rounding == "RND_CONV":
            v = fl + (1 if up or (tie and fl & 1) else 0)
        else:
            raise ValueError(rounding)
    lo, hi = dst.min_int, dst.max_int
    if overflow == "WRAP":
        return (v - lo) % (1 << dst.width) + lo
    if overflow == "SAT":
        return min(max(v, lo), hi)
    if overflow == "SAT_SYM":
        return min(max(v, -hi if dst.signed else lo), hi)
    if overflow == "SAT_ZERO":
        return v if lo <= v <= hi else 0
    raise ValueError(overflow)


def ref_run(net: QNet, x: np.ndarray) -> np.ndarray:
    """Run ``net`` event by event in Python integers; returns the concatenated outputs."""
    out_rows = []
    for row in x.tolist():
        vals = {net.inputs[0]: [int(v) for v in row]}
        for lay in net.layers:
            src = net.tensors[lay.input].fixed
            dst = net.tensors[lay.output].fixed
            xs = vals[lay.input]
            r, o = lay.rounding, lay.overflow
            if lay.op == "dense":
                wf, bf = lay.array_formats["weight"], lay.array_formats["bias"]
                frac = max(src.frac_bits + wf.frac_bits, bf.frac_bits)
                wmul = 1 << (frac - src.frac_bits - wf.frac_bits)
                w = lay.arrays["weight"].tolist()
                b = lay.arrays["bias"].tolist()
                accs = []
                for j in range(len(b)):
                    acc = sum(xs[i] * w[i][j] for i in range(len(xs))) * wmul
                    accs.append(acc + (b[j] << (frac - bf.frac_bits)))
                vals[lay.output] = [ref_requantize(a, frac, dst, r, o) for a in accs]
            elif lay.op == "scale":
                of = lay.array_formats["offset"]
                shifts = lay.arrays["shift"].tolist()
                base = max(src.frac_bits, of.frac_bits)
                frac = base + max(max(shifts), 0)
                res = []
                for xi, off, s in zip(xs, lay.arrays["offset"].tolist(), shifts, strict=True):
                    v = (xi << (base - src.frac_bits)) - (off << (base - of.frac_bits))
                    res.append(ref_requantize(v << (frac - base - s), frac, dst, r, o))
                vals[lay.output] = res
            elif lay.op == "affine":
                mf, af = lay.array_formats["mult"], lay.array_formats["add"]
                frac = max(src.frac_bits + mf.frac_bits, af.frac_bits)
                res = []
                for xi, m, a in zip(
                    xs, lay.arrays["mult"].tolist(), lay.arrays["add"].tolist(), strict=True
                ):
                    v = (xi * m << (frac - src.frac_bits - mf.frac_bits)) + (
                        a << (frac - af.frac_bits)
                    )
                    res.append(ref_requantize(v, frac, dst, r, o))
                vals[lay.output] = res
            elif lay.op == "relu":
                vals[lay.output] = [ref_requantize(max(v, 0), src.frac_bits, dst, r, o) for v in xs]
            elif lay.op == "quantize":
                vals[lay.output] = [ref_requantize(v, src.frac_bits, dst, r, o) for v in xs]
            elif lay.op == "sum_squares":
                acc = sum(v * v for v in xs)
                vals[lay.output] = [ref_requantize(acc, 2 * src.frac_bits, dst, r, o)]
            else:
                raise ValueError(lay.op)
        out_rows.append([v for name in net.outputs for v in vals[name]])
    return np.array(out_rows, dtype=np.int64)
