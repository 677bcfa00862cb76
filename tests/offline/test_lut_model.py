"""LUT model features (exact) and its yosys calibration (slow)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.models.build import NetBuilder
from l1forge.models.fixed import Fixed
from l1forge.offline.lut_model import calibrate, ir_features, significant_bits
from l1forge.offline.network import QuantMLP, QuantMLPConfig


def test_significant_bits():
    w = np.array([0, 1, -1, 2, 3, -6, 12, 5, -128, 127])
    assert_array_equal(significant_bits(w), [0, 1, 1, 1, 2, 2, 2, 3, 1, 7])


def test_ir_features_count_bits_of_each_product():
    b = NetBuilder("t", 2, Fixed(False, 8, 8))
    w = np.array([[3, 0], [-4, 5]])
    b.dense("d", w, Fixed(True, 6, 6), np.zeros(2, np.int64), Fixed(True, 6, 6))
    net = b.build()
    ebops, acc = ir_features(net)
    assert ebops == 8 * (2 + 0 + 1 + 3)
    assert acc == net.tensors["d"].fixed.width * 3


@pytest.mark.slow
def test_calibration_on_yosys(tmp_path):
    nets = [QuantMLP(n, QuantMLPConfig(hidden=h, weight_frac_bits=f), seed=i).export(6)
            for i, (n, h, f) in enumerate([(8, 2, 3.0), (8, 4, 4.0), (12, 4, 5.0)])]  # fmt: skip
    model = calibrate(nets, tmp_path)
    assert model.k_mul > 0 or model.k_add > 0
    assert len(model.points) == 3 and all(p[2] > 0 for p in model.points)
    assert np.isfinite(model.rel_error_loo)
