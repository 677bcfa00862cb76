"""The torch quantized network against the qnet emulator on its exported IR: bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal

from l1forge.models.emulator import Emulator
from l1forge.models.fixed import Fixed, quantize_real
from l1forge.models.qnet import load, save
from l1forge.models.torch_quant import quantize_ste
from l1forge.offline.network import QuantMLP, QuantMLPConfig


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("rounding", ["TRN", "RND", "RND_CONV"])
@pytest.mark.parametrize("overflow", ["SAT", "WRAP"])
@pytest.mark.parametrize("fmt", [Fixed(True, 8, 3), Fixed(False, 6, 2), Fixed(True, 12, -2)])
def test_torch_quantizer_equals_fixed_quantize_real(rounding, overflow, fmt):
    rng = np.random.default_rng(1)
    span = 2.0 ** (fmt.int_bits + 1)
    x = np.concatenate(
        [
            rng.uniform(-span, span, 4000),
            np.arange(-300, 300) * fmt.lsb / 2,  # exact halves: every tie-breaking case
            [0.0, fmt.max_int * fmt.lsb, fmt.min_int * fmt.lsb, -fmt.lsb / 2],
        ]
    )
    ref = quantize_real(x, fmt, rounding, overflow) * fmt.lsb
    got = quantize_ste(torch.tensor(x), fmt, rounding, overflow).numpy()
    assert_array_equal(got, ref)


def test_frac_bits_gradient_is_hgq_surrogate():
    fmt = Fixed(True, 8, 2)
    f = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    x = torch.tensor([0.3, -1.17, 0.001], dtype=torch.float64)
    q = quantize_ste(x, fmt, "RND_CONV", "SAT", f)
    q.sum().backward()
    expected = -np.log(2) * (q.detach() - x).sum().item()
    assert abs(f.grad.item() - expected) < 1e-12


def _trained_net(input_bits: int, seed: int) -> QuantMLP:
    net = QuantMLP(18, QuantMLPConfig(hidden=8, weight_frac_bits=5.0), seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(20):
        x = torch.randint(0, 2**input_bits, (64, 18), generator=gen).double()
        target = x.sum(1, keepdim=True) / 2**input_bits
        loss = ((net(x, input_bits)[:, :1] - target) ** 2).mean() + 1e-4 * net.ebops(input_bits)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


@pytest.mark.parametrize(
    ("input_bits", "seed", "boost"), [(8, 0, 1), (10, 1, 1), (12, 2, 1), (8, 3, 64)]
)
def test_torch_net_equals_emulator_on_exported_ir(tmp_path, input_bits, seed, boost):
    net = _trained_net(input_bits, seed)
    with torch.no_grad():
        net.w0.mul_(boost)  # boost 64 drives the hidden layer into saturation
    ir = load(save(net.export(input_bits), tmp_path / "net.json"))
    rng = np.random.default_rng(seed)
    top = 2**input_bits - 1
    x = np.concatenate(
        [
            rng.integers(0, top + 1, (20000, 18)),
            rng.integers(0, 4, (2000, 18)),  # small counts: ReLU boundaries, rounding
            np.zeros((1, 18), np.int64),
            np.full((1, 18), top),  # saturating the hidden layer
        ]
    )
    with torch.no_grad():
        out = net(torch.tensor(x, dtype=torch.float64), input_bits).numpy()
    torch_ints = out * 2.0 ** net.output_frac_bits()
    assert_array_equal(torch_ints, np.round(torch_ints))  # exact integers
    emu = Emulator(ir).run(x)
    assert_array_equal(torch_ints.astype(np.int64), emu)
    if boost > 1:  # the SAT path of the hidden re-quantization is really exercised
        hidden = Emulator(ir).trace(x[-1:])["relu0"]
        assert hidden.max() == ir.tensors["relu0"].fixed.max_int
