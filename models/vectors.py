"""Test vectors for bit-exactness checks, derived from a qnet IR: random inputs plus corners.

Corners: zero, the most negative and largest inputs, per-feature extremes, random mixes of
extremes, and inputs that put each first-layer ReLU's pre-activation exactly on its boundaries
(zero, one accumulator LSB either side, rounding ties, the saturation edge), solved exactly
from the integer weights.
"""

from __future__ import annotations

import numpy as np
from l1forge.models.qnet import QNet


def random_vectors(net: QNet, n: int, seed: int = 0) -> np.ndarray:
    """``n`` uniform integers over the full input format, half of them near the scaling offsets."""
    fmt = net.input_specs[0].fixed
    rng = np.random.default_rng(seed)
    size = net.input_specs[0].size
    x = rng.integers(fmt.min_int, fmt.max_int + 1, (n, size), dtype=np.int64)
    scale = [lay for lay in net.layers if lay.op == "scale" and lay.input == net.inputs[0]]
    if scale:
        lay = scale[0]
        spread = 2.0 ** lay.arrays["shift"].astype(float) * rng.exponential(2.0, (n // 2, 1))
        near = lay.arrays["offset"] + np.rint(rng.normal(0, 1, (n // 2, size)) * spread)
        x[: n // 2] = np.clip(near, fmt.min_int, fmt.max_int).astype(np.int64)
    return x


def extreme_vectors(net: QNet, n_mixed: int = 256, seed: int = 0) -> np.ndarray:
    """Zero, all-min, all-max, alternating, one-hot extremes and random mixes of extremes."""
    fmt = net.input_specs[0].fixed
    size = net.input_specs[0].size
    lo, hi = fmt.min_int, fmt.max_int
    rows = [np.full(size, v) for v in (0, lo, hi, 1, -1 if fmt.signed else 1)]
    alt = np.where(np.arange(size) % 2 == 0, lo, hi)
    rows += [alt, alt[::-1]]
    for v in (lo, hi):
        one_hot = np.zeros((size, size), dtype=np.int64)
        np.fill_diagonal(one_hot, v)
        rows += list(one_hot)
    choices = [lo, hi, 0]
    scale = [lay for lay in net.layers if lay.op == "scale" and lay.input == net.inputs[0]]
    rng = np.random.default_rng(seed)
    mixed = rng.choice(np.array(choices), (n_mixed, size))
    if scale:
        offs = np.clip(scale[0].arrays["offset"], lo, hi)
        mixed = np.where(rng.random((n_mixed, size)) < 0.5, offs, mixed)
        rows.append(offs)
    return np.concatenate([np.array(rows, dtype=np.int64), mixed.astype(np.int64)])


def _ext_gcd(a: int, b: int) -> tuple[int, int, int]:
    if b == 0:
        return (abs(a), 1 if a >= 0 else -1, 0)
    g, x, y = _ext_gcd(b, a % b)
    return g, y, x - (a // b) * y


def relu_boundary_vectors(net: QNet, max_pairs: int = 40) -> np.ndarray:
    """Inputs whose first dense layer output sits exactly on each following ReLU's boundaries.

    Needs the chain scale -> quantize -> dense -> relu at the start; other features stay at
    their offsets (scaled value 0), two features are solved for from the integer weights.
    """
    ops = [lay.op for lay in net.layers[:4]]
    if ops != ["scale", "quantize", "dense", "relu"]:
        return np.zeros((0, net.input_specs[0].size), dtype=np.int64)
    sc, qz, dn, rl = net.layers[:4]
    fmt = net.input_specs[0].fixed
    q_fmt = net.tensors[qz.output].fixed
    w_fmt, b_fmt = dn.array_formats["weight"], dn.array_formats["bias"]
    f_q, f_r = q_fmt.frac_bits, net.tensors[rl.output].fixed.frac_bits
    relu_max = net.tensors[rl.output].fixed.max_int
    acc_f = max(f_q + w_fmt.frac_bits, b_fmt.frac_bits)
    offset = sc.arrays["offset"].astype(np.int64)
    shift = sc.arrays["shift"].astype(np.int64)
    # A raw step of `raw_step` moves the quantized input by `q_step` LSBs, exactly.
    raw_step = [1 << max(0, int(s) - f_q) for s in shift]
    q_step = [1 << max(0, f_q - int(s)) for s in shift]
    w = dn.arrays["weight"].astype(object) * (1 << (acc_f - f_q - w_fmt.frac_bits))
    bias = dn.arrays["bias"].astype(object) * (1 << (acc_f - b_fmt.frac_bits))
    one_r = 1 << max(0, acc_f - f_r)
    half_r = one_r // 2 if acc_f > f_r else 0
    targets = [0, -1, 1, half_r, one_r + half_r, relu_max * one_r, relu_max * one_r + half_r]
    base = np.clip(offset, fmt.min_int, fmt.max_int)
    rows = []
    size = len(offset)
    for j in range(w.shape[1]):
        coef = [int(w[i, j]) * q_step[i] for i in range(size)]
        feats = [i for i in range(size) if coef[i] != 0 and base[i] == offset[i]]
        pairs = [(a, b) for k, a in enumerate(feats) for b in feats[k + 1 :]][:max_pairs]
        for t in sorted(set(targets)):
            need = t - int(bias[j])
            for a, b in pairs:
                row = _solve_pair(coef[a], coef[b], need, a, b, base, raw_step, q_step, q_fmt, fmt)
                if row is not None:
                    rows.append(row)
                    break
    return np.array(rows, dtype=np.int64).reshape(-1, size)


def _solve_pair(ca, cb, need, a, b, base, raw_step, q_step, q_fmt, fmt):
    g, x0, y0 = _ext_gcd(ca, cb)
    if need % g:
        return None
    ua, ub = x0 * (need // g), y0 * (need // g)
    da, db = cb // g, -(ca // g)
    k = -round(ua / da) if da else 0  # the solution of the family closest to zero
    for kk in (k, k - 1, k + 1):
        va, vb = ua + kk * da, ub + kk * db
        qa, qb = va * q_step[a], vb * q_step[b]
        if not (q_fmt.min_int <= qa <= q_fmt.max_int and q_fmt.min_int <= qb <= q_fmt.max_int):
            continue
        ra, rb = int(base[a]) + va * raw_step[a], int(base[b]) + vb * raw_step[b]
        if fmt.min_int <= ra <= fmt.max_int and fmt.min_int <= rb <= fmt.max_int:
            row = base.copy()
            row[a], row[b] = ra, rb
            return row
    return None


def bitexact_vectors(net: QNet, n_random: int, seed: int = 0) -> np.ndarray:
    """Random vectors plus every corner: the set the bit-exactness tests and benchmark use."""
    parts = [relu_boundary_vectors(net), extreme_vectors(net, seed=seed)]
    n_rest = max(0, n_random - sum(len(p) for p in parts))
    parts.append(random_vectors(net, n_rest, seed))
    return np.concatenate(parts)


def relu_boundary_hits(pre_activation: np.ndarray, acc_frac: int, relu_frac: int) -> int:
    """How many pre-activations sit exactly at zero or at a rounding tie of the ReLU output."""
    zero = np.count_nonzero(pre_activation == 0)
    if acc_frac <= relu_frac:
        return int(zero)
    half = 1 << (acc_frac - relu_frac - 1)
    tie = (pre_activation > 0) & (np.mod(pre_activation, 2 * half) == half)
    return int(zero + np.count_nonzero(tie))


__all__ = [
    "bitexact_vectors",
    "extreme_vectors",
    "random_vectors",
    "relu_boundary_hits",
    "relu_boundary_vectors",
]
