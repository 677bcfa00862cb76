import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.errors import DataFormatError
from l1forge.models.fixed import OVERFLOW_MODES, ROUNDING_MODES, Fixed, quantize_real, requantize

from .reference import ref_requantize

FORMATS = [Fixed(True, 8, 3), Fixed(False, 6, 2), Fixed(True, 12, 12), Fixed(True, 5, -2)]


@pytest.mark.parametrize("rounding", ROUNDING_MODES)
@pytest.mark.parametrize("overflow", OVERFLOW_MODES)
@pytest.mark.parametrize("dst", FORMATS, ids=lambda f: f.hls_type())
@pytest.mark.parametrize("src_frac", [0, 3, 9])
def test_requantize_matches_integer_reference(rounding, overflow, dst, src_frac):
    rng = np.random.default_rng(7)
    q = np.concatenate([rng.integers(-(2**20), 2**20, 3000), np.arange(-300, 301)])
    got = requantize(q.astype(np.float64), src_frac, dst, rounding, overflow)
    want = [ref_requantize(int(v), src_frac, dst, rounding, overflow) for v in q]
    assert_array_equal(got.astype(np.int64), np.array(want, dtype=np.int64))


@pytest.mark.parametrize("rounding", ROUNDING_MODES)
def test_quantize_real_rounds_halves_as_named(rounding):
    f = Fixed(True, 8, 8)  # integers -128..127
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.25, -0.75])
    got = quantize_real(x, f, rounding, "SAT")
    # the same numbers as integers with one fractional bit, through the integer reference
    want = [ref_requantize(int(v * 4), 2, f, rounding, "SAT") for v in x]
    assert_array_equal(got, want)


def test_format_limits_and_errors():
    f = Fixed(True, 8, 3)
    assert (f.min_int, f.max_int, f.frac_bits, f.lsb) == (-128, 127, 5, 2**-5)
    u = Fixed(False, 8, 3)
    assert (u.min_int, u.max_int) == (0, 255)
    assert Fixed.covering(-129, 3, 2) == Fixed(True, 9, 7)
    assert Fixed.covering(0, 255, 0) == Fixed(False, 8, 8)
    with pytest.raises(DataFormatError):
        Fixed(True, 1, 0)
    with pytest.raises(DataFormatError):
        Fixed(True, 80, 0)
    with pytest.raises(DataFormatError):
        Fixed.from_json({"signed": 1, "width": 8, "int_bits": 3})
    with pytest.raises(DataFormatError):
        quantize_real(np.array([np.nan]), f)
