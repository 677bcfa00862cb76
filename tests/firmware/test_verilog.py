"""IR -> alkaid trace: bit-exact against the emulator for every mode, clear errors otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from l1forge.errors import DataFormatError
from l1forge.firmware import verilog
from l1forge.models.build import NetBuilder, random_mlp
from l1forge.models.fixed import Fixed


def _rounding_net(rounding: str, overflow: str = "SAT"):
    """Dense outputs with fraction bits, re-quantized coarser with ``rounding``: ties occur."""
    rng = np.random.default_rng(2)
    b = NetBuilder(f"r_{rounding}", 6, Fixed(True, 8, 4))
    w = rng.integers(-8, 8, size=(6, 4))
    b.dense("d", w, Fixed(True, 4, 2), rng.integers(-8, 8, size=4), Fixed(True, 4, 2))
    b.quantize("q", Fixed(True, 7, 4), rounding, overflow)
    b.relu("r", Fixed(False, 5, 3), rounding, overflow)
    b.quantize("s", Fixed(True, 6, 5), rounding, "WRAP")
    return b.build(outputs=("q", "r", "s"))


@pytest.mark.parametrize(
    "rounding", ["TRN", "RND", "RND_CONV", "TRN_ZERO", "RND_ZERO", "RND_MIN_INF", "RND_INF"]
)
@pytest.mark.parametrize("overflow", ["SAT", "WRAP", "SAT_SYM"])
def test_every_rounding_mode_bit_exact(rounding, overflow):
    net = _rounding_net(rounding, overflow)
    check = verilog.check_interpreter(verilog.to_comb(net), net, n_random=3000)
    assert check.vectors_compared > 3000 and check.mismatches == 0


@pytest.mark.parametrize("rounding", ["TRN", "RND", "RND_CONV", "TRN_ZERO", "RND_INF"])
@pytest.mark.parametrize("overflow", ["SAT", "WRAP"])
def test_affine_bit_exact(rounding, overflow):
    """x * mult + add with signed, zero and odd constant multipliers, re-quantized coarser."""
    rng = np.random.default_rng(4)
    b = NetBuilder(f"a_{rounding}", 6, Fixed(True, 8, 4))
    mult = np.array([-77, 0, 5, 93, -1, 128])
    b.affine("a", mult, Fixed(True, 9, 3), rng.integers(-300, 300, 6), Fixed(True, 10, 2))
    b.affine("q", np.array([3, -5, 7, 1, -2, 9]), Fixed(True, 5, 2), rng.integers(-8, 8, 6),
             Fixed(True, 4, 2), Fixed(True, 9, 5), rounding, overflow)  # fmt: skip
    net = b.build(outputs=("a", "q"))
    check = verilog.check_interpreter(verilog.to_comb(net), net, n_random=3000)
    assert check.vectors_compared > 3000 and check.mismatches == 0


def test_encoder_shape_bit_exact():
    net = random_mlp(57, (32, 16), 3, score=True, seed=4)
    assert verilog.check_interpreter(verilog.to_comb(net), net, n_random=5000).mismatches == 0


def test_sat_zero_is_refused_with_the_layer_name():
    b = NetBuilder("z", 4, Fixed(True, 8, 8))
    b.quantize("clip", Fixed(True, 4, 4), "TRN", "SAT_ZERO")
    with pytest.raises(verilog.UnsupportedModeError, match=r"layer 'clip'.*SAT_ZERO"):
        verilog.to_comb(b.build())


def test_interpreter_check_can_fail():
    a = random_mlp(8, (4,), 2, seed=1)
    b = random_mlp(8, (4,), 2, seed=2)
    with pytest.raises(DataFormatError, match="differs from the emulator"):
        verilog.check_interpreter(verilog.to_comb(a), b, n_random=500)
