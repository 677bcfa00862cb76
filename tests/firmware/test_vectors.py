"""The benches' vectors are the shared generator's: ReLU boundaries and extremes first."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.firmware.vectors import bench_vectors
from l1forge.models.build import random_mlp
from l1forge.models.emulator import Emulator
from l1forge.models.vectors import corner_vectors, relu_boundary_hits, relu_boundary_vectors


@pytest.mark.parametrize(
    "net",
    [random_mlp(16, (8,), 3, score=True, seed=5), random_mlp(57, (32, 16), 3, score=True, seed=4)],
    ids=["bench_net", "encoder_shape"],
)
def test_bench_vectors_put_every_first_relu_on_its_boundaries(net):
    x = bench_vectors(net, 500, seed=11)
    boundary = relu_boundary_vectors(net)
    assert len(boundary) >= net.tensors["dense0"].size
    assert_array_equal(x[: len(corner_vectors(net, 11))], corner_vectors(net, 11))
    assert len(x) == len(corner_vectors(net, 11)) + 500
    pre = Emulator(net).trace(x)["dense0"]
    assert np.all((pre == 0).any(axis=0)), "a ReLU zero boundary was not reached"
    acc_f = net.tensors["dense0"].fixed.frac_bits
    assert relu_boundary_hits(pre, acc_f, net.tensors["relu0"].fixed.frac_bits) >= pre.shape[1]
    fmt = net.input_specs[0].fixed
    assert x.min() == fmt.min_int and x.max() == fmt.max_int
