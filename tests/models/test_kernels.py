"""The emulator's compiled kernels against `fixed.requantize`, the numpy definition of every
re-quantization: each rounding and overflow mode, with and without a ReLU first, chained, on
float32, float64 and integer inputs, over random values, exact ties and the corners."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.errors import DataFormatError
from l1forge.models import kernels
from l1forge.models.fixed import OVERFLOW_MODES, ROUNDING_MODES, Fixed, requantize


def _values(src_frac: int, shift: int, n: int, seed: int) -> np.ndarray:
    """Integers at ``src_frac`` fraction bits: random, exact ties of the ``shift`` being
    dropped, values one LSB either side of them, zero and large magnitudes of both signs."""
    rng = np.random.default_rng(seed)
    rand = rng.integers(-(2**20), 2**20, n)
    half = 1 << max(shift - 1, 0)
    step = 1 << max(shift, 0)
    k = rng.integers(-2000, 2000, n // 4) * step
    ties = np.concatenate([k + half, k - half, k + half + 1, k + half - 1, -k - half])
    corners = np.array([0, 1, -1, 2**20 - 1, -(2**20), half, -half, step, -step])
    return np.concatenate([rand, ties, corners]).astype(np.float64)


def _reference(q: np.ndarray, stages: list[tuple], dst_fmts: list[Fixed]) -> np.ndarray:
    v = q
    for (src_frac, relu, rounding, overflow), dst in zip(stages, dst_fmts, strict=True):
        if relu:
            v = np.maximum(v, 0.0)
        v = requantize(v, src_frac, dst, rounding, overflow)
    return v


@pytest.mark.parametrize("rounding", ROUNDING_MODES)
@pytest.mark.parametrize("overflow", OVERFLOW_MODES)
@pytest.mark.parametrize("relu", [False, True])
def test_one_stage_equals_requantize(rounding, overflow, relu):
    src_frac = 9
    for dst in (Fixed(True, 8, 4), Fixed(False, 6, 2), Fixed(True, 12, 9), Fixed(True, 5, 11)):
        shift = src_frac - dst.frac_bits
        q = _values(src_frac, shift, 20_000, seed=dst.width)
        st = kernels.stage(src_frac, dst, rounding, overflow, (-(2**21), 2**21), relu=relu)
        fused = kernels.Fused(np.ones(1), np.zeros(1), [st], dst)
        got = fused(q.reshape(-1, 1)).ravel()
        assert_array_equal(got, _reference(q, [(src_frac, relu, rounding, overflow)], [dst]))


def test_proven_bounds_skip_overflow_and_change_nothing():
    """With bounds that prove the result stays in range, the overflow step is left out."""
    dst = Fixed(True, 16, 12)  # 4 fraction bits: +-4000 at 8 become +-250
    st = kernels.stage(8, dst, "RND", "WRAP", (-4000, 4000))
    assert st.overflow == kernels.NO_OVERFLOW
    q = np.arange(-4000, 4001, dtype=np.float64)
    got = kernels.Fused(np.ones(1), np.zeros(1), [st], dst)(q.reshape(-1, 1)).ravel()
    assert_array_equal(got, requantize(q, 8, dst, "RND", "WRAP"))


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.float32, np.float64])
def test_head_and_three_stages_on_every_input_dtype(dtype):
    """x * a + b per feature, then quantize, ReLU + quantize, quantize (mixed modes)."""
    rng = np.random.default_rng(5)
    n, m = 3000, 7
    x = rng.integers(-3000, 3000, (n, m))
    x[:4] = [[-3000] * m, [2999] * m, [0] * m, [1] * m]
    a = rng.integers(-8, 9, m).astype(np.float64) * 4.0
    b = rng.integers(-500, 500, m).astype(np.float64)
    fmts = [Fixed(True, 14, 6), Fixed(False, 8, 3), Fixed(True, 6, 1)]
    spec = [(8, False, "RND_CONV", "SAT"), (6, True, "TRN", "WRAP"), (3, False, "RND_INF", "SAT")]
    stages = [
        kernels.stage(f, dst, r, o, (-(2**30), 2**30), relu=relu)
        for (f, relu, r, o), dst in zip(spec, fmts, strict=True)
    ]
    got = kernels.Fused(a, b, stages, fmts[-1])(x.astype(dtype))
    assert got.dtype == np.float32  # 6-bit result
    expected = _reference(x * a + b, spec, fmts)
    assert_array_equal(got, expected)


def test_wide_results_are_float64():
    dst = Fixed(True, 40, 0)
    st = kernels.stage(0, dst, "TRN", "WRAP", (-(2**45), 2**45))
    fused = kernels.Fused(np.ones(1), np.zeros(1), [st], dst)
    q = np.array([[2.0**39 + 7], [-(2.0**39) - 3], [123.0]])
    got = fused(q)
    assert got.dtype == np.float64
    assert_array_equal(got, requantize(q, 0, dst, "TRN", "WRAP"))


def test_unknown_mode_is_refused():
    with pytest.raises(DataFormatError, match="unknown rounding"):
        kernels.stage(4, Fixed(True, 8, 2), "ROUND_UP", "SAT", (0, 1))


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64])
def test_checked_pass_rejects_inputs_outside_the_format_and_computes_the_same(dtype):
    """A pass with ``check`` (the emulator's first one) refuses any input value outside the
    input format, one LSB beyond either bound anywhere in the array, and otherwise returns
    exactly what the unchecked pass returns."""
    fmt, dst = Fixed(True, 10, 6), Fixed(True, 8, 4)
    st = kernels.stage(4, dst, "RND", "SAT", (fmt.min_int, fmt.max_int))
    a, b = np.full(5, 3.0), np.arange(5.0)
    checked = kernels.Fused(a, b, [st], dst, check=(fmt, "input outside ap_fixed<10,6>"))
    plain = kernels.Fused(a, b, [st], dst)
    rng = np.random.default_rng(7)
    x = rng.integers(fmt.min_int, fmt.max_int + 1, (3000, 5)).astype(dtype)
    x[0], x[1] = fmt.min_int, fmt.max_int  # the bounds themselves are inside
    assert_array_equal(checked(x), plain(x))
    for value in (fmt.min_int - 1, fmt.max_int + 1):
        for where in ((0, 0), (1777, 3), (2999, 4)):
            bad = x.copy()
            bad[where] = value
            with pytest.raises(DataFormatError, match="outside ap_fixed<10,6>"):
                checked(bad)
            plain(bad)  # the unchecked pass does not look
