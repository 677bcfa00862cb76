"""QKeras predict == qnet emulator == hls4ml C simulation, exactly, >= 100,000 vectors per model."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.models import hls, networks
from l1forge.models.emulator import Emulator
from l1forge.models.vectors import bitexact_vectors, relu_boundary_hits, relu_boundary_vectors

from .configs import BIT_CONFIGS, KINDS, SHIPPED

N_VECTORS = 100_000
CASES = [(c, k) for c in BIT_CONFIGS for k in KINDS] + [(SHIPPED, "classifier")]


@pytest.mark.parametrize(("config_name", "kind"), CASES, ids=[f"{c}-{k}" for c, k in CASES])
def test_qkeras_emulator_hls4ml_agree(built, config_name, kind):
    b = built(config_name, kind)
    x = bitexact_vectors(b.net, N_VECTORS, seed=11)
    assert len(x) >= N_VECTORS
    emu = Emulator(b.net)
    y_emu = emu.run_float(x)
    assert y_emu.shape == (len(x), 1)  # one output: the score / logit
    assert_array_equal(networks.exact_predict(b.deploy, x), y_emu)
    assert_array_equal(hls.predict(b.hls, x), y_emu)
    # The set is not degenerate: the outputs take many values.
    assert len(np.unique(y_emu)) > 20


@pytest.mark.parametrize(("config_name", "kind"), CASES, ids=[f"{c}-{k}" for c, k in CASES])
def test_relu_boundaries_are_hit(built, config_name, kind):
    b = built(config_name, kind)
    x = relu_boundary_vectors(b.net)
    tr = Emulator(b.net).trace(x)
    dense = b.net.layer("dense0")
    relu = b.net.layer("relu0")
    pre = tr["dense0"]
    acc_f = b.net.tensors["dense0"].fixed.frac_bits
    relu_f = b.net.tensors["relu0"].fixed.frac_bits
    # every unit of the first hidden layer sits exactly at zero for some vector
    assert np.all((pre == 0).any(axis=0)), "a ReLU zero boundary was not reached"
    assert relu_boundary_hits(pre, acc_f, relu_f) >= pre.shape[1]
    assert dense.op == "dense" and relu.op == "relu"
    assert_array_equal(networks.exact_predict(b.deploy, x), Emulator(b.net).run_float(x))
    assert_array_equal(hls.predict(b.hls, x), Emulator(b.net).run_float(x))


@pytest.mark.parametrize(("config_name", "kind"), CASES, ids=[f"{c}-{k}" for c, k in CASES])
def test_formats_equal_hls4ml_bit_exact_precisions(built, config_name, kind):
    """Each hls4ml result type equals the IR tensor it holds.

    hls4ml folds the input quantizer into the scaling node and the head quantizer into the
    dense layer's linear activation; the score's dot product is typed as a signed product of
    independent intervals, one bit wider than the IR's unsigned sum of squares.
    """
    b = built(config_name, kind)
    head = "mu" if kind == "ad" else "logit"
    alias = {"scale": "x_q", f"{head}_dense_linear": head}
    seen = set()
    for t in hls.result_types(b.hls):
        ir_name = alias.get(t.node, t.node)
        ir_fixed = b.net.tensors[ir_name].fixed
        seen.add(ir_name)
        if t.node == "score":
            assert t.fixed.frac_bits == ir_fixed.frac_bits
            assert t.fixed.signed and not ir_fixed.signed
            assert t.fixed.max_int >= ir_fixed.max_int and t.fixed.width == ir_fixed.width + 1
            continue
        assert t.fixed == ir_fixed, (t.node, t.fixed, ir_fixed)
        producer = [lay for lay in b.net.layers if lay.output == ir_name]
        if producer and t.node != "x":
            assert (t.rounding, t.overflow) == (producer[0].rounding, producer[0].overflow)
    assert seen == set(b.net.tensors) - {"scale"}
