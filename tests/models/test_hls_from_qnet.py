"""hls4ml projects built from the qnet IR itself: C-sim == emulator, types == IR formats."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.errors import BitExactnessError
from l1forge.models import hls
from l1forge.models.build import random_mlp
from l1forge.models.emulator import Emulator
from l1forge.models.fixed import Fixed
from l1forge.models.qnet import load
from l1forge.models.vectors import bitexact_vectors


def _codesign_ir():
    import torch

    from l1forge.offline.network import QuantMLP, QuantMLPConfig

    net = QuantMLP(18, QuantMLPConfig(hidden=8, weight_frac_bits=5.0), seed=4)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(4)
    for _ in range(10):
        x = torch.randint(0, 2**10, (64, 18), generator=gen).double()
        loss = ((net(x, 10)[:, :1] - x.sum(1, keepdim=True) / 2**10) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.export(10, name="codesign_net")


@pytest.fixture(scope="session")
def ir_nets(jet_tagger_ir, general_bn_ir, built):
    def reference():
        from l1forge.models.reference import reference_encoder

        return load(reference_encoder().qnet_path)

    return {
        "reference": reference,  # the cached reference encoder: built on first use (minutes)
        "default_ad": lambda: built("default", "ad").net,  # its shape, trained a few steps
        "codesign": _codesign_ir,
        "jet_tagger": lambda: jet_tagger_ir,
        "general_bn": lambda: general_bn_ir,
    }


@pytest.fixture(scope="session")
def compiled(ir_nets, tmp_path_factory):
    """IR name -> (net, compiled hls4ml model built from that IR), once per session."""
    cache = {}

    def get(name: str):
        if name not in cache:
            net = ir_nets[name]()
            out = tmp_path_factory.mktemp(f"hls_{name}")
            cache[name] = (net, hls.compile_csim(hls.from_qnet(net, out)))
        return cache[name]

    return get


def _check(net, hm, n: int) -> None:
    x = bitexact_vectors(net, n, seed=5)
    assert len(x) >= n
    want = Emulator(net).run(x)
    assert_array_equal(hls.predict_qnet(hm, net, x), want)
    assert len(np.unique(want)) > 20  # the outputs are not degenerate


def test_default_encoder_csim_equals_emulator(compiled):
    """The exported default encoder (its scale op included); the trained reference encoder
    itself runs in the slow 100k check, since a fresh checkout would first have to build it."""
    net, hm = compiled("default_ad")
    _check(net, hm, 3000)
    assert hls.check_result_types(hm, net) >= len(net.layers)


def test_general_batchnorm_csim_equals_emulator(compiled):
    """An imported batch norm as the IR's affine op: hls4ml's BatchNormalization node with
    scale and bias types equal to the IR's mult and add formats."""
    net, hm = compiled("general_bn")
    _check(net, hm, 10_000)
    assert hls.check_result_types(hm, net) == len(net.layers) + 1
    node, lay = hm.graph["bn"], net.layer("bn")
    assert node.class_name == "BatchNormalization"
    for attr, key in (("scale_t", "mult"), ("bias_t", "add")):
        p = node.get_attr(attr).precision
        assert Fixed(bool(p.signed), int(p.width), int(p.integer)) == lay.array_formats[key]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reference", "codesign", "jet_tagger", "general_bn"])
def test_csim_equals_emulator_100k(compiled, name):
    net, hm = compiled(name)
    _check(net, hm, 100_000)
    assert hls.check_result_types(hm, net) >= len(net.layers)


def test_every_node_type_is_the_ir_format(tmp_path):
    """Node by node: each result type carries its tensor's format and its layer's modes."""
    net = dataclasses.replace(
        random_mlp(16, (8,), 3, score=True, seed=5, name="typed"), outputs=("mu", "score")
    )
    hm = hls.from_qnet(net, tmp_path)
    types = {t.node: t for t in hls.result_types(hm)}
    for lay in net.layers:
        t = types[lay.output]
        assert t.fixed == net.tensors[lay.output].fixed
        assert (t.rounding, t.overflow) == (lay.rounding, lay.overflow)
    assert types["x"].fixed == net.tensors["x"].fixed
    assert hls.check_result_types(hm, net) == len(net.layers) + 1
    # The check can fail: one result type one bit narrower is reported with both types.
    p = hm.graph["dense0"].get_output_variable().type.precision
    p.width -= 1
    with pytest.raises(BitExactnessError, match="dense0"):
        hls.check_result_types(hm, net)
