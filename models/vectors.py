"""Test vectors for bit-exactness checks, derived from a qnet IR: random inputs plus corners.

The one generator every consumer uses: the emulator and hls4ml tests, alkaid's interpreter check,
the cocotb benches (through ``l1forge.firmware.vectors``) and the benchmarks.
Corners: zero, the most negative and largest inputs, per-feature extremes, random mixes of
extremes, and inputs that put each first-layer ReLU's pre-activation exactly on its boundaries
(zero, one accumulator LSB either side, rounding ties, the saturation edge), solved exactly
from the integer weights. Random inputs mix uniform, moderate and sparse vectors around the
input's rest point (scaled value zero), and, with an input scaling, vectors near its offsets.
"""

from __future__ import annotations

import numpy as np

from l1forge.models.qnet import QNet


def _scale_layer(net: QNet):
    """The input scaling layer when the network starts with one reading its input, else None."""
    first = net.layers[0] if net.layers else None
    if first is None or first.op != "scale" or first.input != net.inputs[0]:
        return None
    return first


def rest_point(net: QNet) -> np.ndarray:
    """The input integers whose scaled value is zero: the scale offsets (clipped), else zeros."""
    fmt = net.input_specs[0].fixed
    size = net.input_specs[0].size
    sc = _scale_layer(net)
    if sc is None:
        return np.clip(np.zeros(size, dtype=np.int64), fmt.min_int, fmt.max_int)
    return np.clip(sc.arrays["offset"].astype(np.int64), fmt.min_int, fmt.max_int)


def random_vectors(net: QNet, n: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded random inputs, ``int64``: uniform over the full format, moderate (a fraction
    of the range around the rest point), sparse (a tenth of the features moved off the rest
    point, so hidden activations sit near the ReLU boundary) and, with an input scaling, half
    of them near the offsets within a few times 2**shift."""
    fmt = net.input_specs[0].fixed
    lo, hi, width = fmt.min_int, fmt.max_int, fmt.width
    size = net.input_specs[0].size
    rng = np.random.default_rng(seed)
    rest = rest_point(net)
    full = rng.integers(lo, hi + 1, (n, size), dtype=np.int64)
    span = max(1, (hi + 1) >> max(0, min(width - 1, width // 3)))
    moderate = np.clip(rest + rng.integers(-span, span + 1, (n, size)), lo, hi)
    sparse = np.where(rng.random((n, size)) < 0.1, moderate, rest)
    kinds = [full, moderate, sparse]
    sc = _scale_layer(net)
    if sc is not None:
        spread = 2.0 ** sc.arrays["shift"].astype(float) * rng.exponential(2.0, (n, 1))
        near = sc.arrays["offset"] + np.rint(rng.normal(0, 1, (n, size)) * spread)
        kinds += [np.clip(near, lo, hi).astype(np.int64)] * 3  # half of all vectors
    kind = rng.integers(0, len(kinds), size=(n, 1))
    x = kinds[0]
    for k in range(1, len(kinds)):
        x = np.where(kind == k, kinds[k], x)
    return x.astype(np.int64)


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

    Needs the chain [scale ->] quantize -> dense -> relu at the start; other features stay at
    their rest point (scaled value 0), two features are solved for from the integer weights.
    """
    size = net.input_specs[0].size
    none = np.zeros((0, size), dtype=np.int64)
    sc = _scale_layer(net)
    chain = list(net.layers[1:4] if sc is not None else net.layers[:3])
    if [lay.op for lay in chain] != ["quantize", "dense", "relu"]:
        return none
    src = sc.output if sc is not None else net.inputs[0]
    for lay in chain:
        if lay.input != src:
            return none
        src = lay.output
    qz, dn, rl = chain
    fmt = net.input_specs[0].fixed
    q_fmt = net.tensors[qz.output].fixed
    w_fmt, b_fmt = dn.array_formats["weight"], dn.array_formats["bias"]
    f_q, f_r = q_fmt.frac_bits, net.tensors[rl.output].fixed.frac_bits
    relu_max = net.tensors[rl.output].fixed.max_int
    acc_f = max(f_q + w_fmt.frac_bits, b_fmt.frac_bits)
    if sc is None:
        offset = np.zeros(size, dtype=np.int64)
        shift = np.full(size, fmt.frac_bits, dtype=np.int64)
    elif sc.array_formats["offset"].frac_bits == fmt.frac_bits:
        offset = sc.arrays["offset"].astype(np.int64)
        shift = sc.arrays["shift"].astype(np.int64) + fmt.frac_bits
    else:
        return none
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


def corner_vectors(net: QNet, seed: int = 0) -> np.ndarray:
    """Every corner: the solved ReLU boundaries, then the extremes and their random mixes."""
    return np.concatenate([relu_boundary_vectors(net), extreme_vectors(net, seed=seed)])


def bitexact_vectors(net: QNet, n_random: int, seed: int = 0) -> np.ndarray:
    """Every corner, then random vectors up to ``n_random`` in all (the corners count)."""
    corners = corner_vectors(net, seed)
    return np.concatenate([corners, random_vectors(net, max(0, n_random - len(corners)), seed)])


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
    "corner_vectors",
    "extreme_vectors",
    "random_vectors",
    "relu_boundary_hits",
    "relu_boundary_vectors",
    "rest_point",
]
