"""HGQ-style learned bit widths (models/hgq.py): the torch twin against the emulator, the
exported network, and the penalty's effect on the bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l1forge.errors import DataFormatError
from l1forge.models.build import NetBuilder, random_mlp
from l1forge.models.emulator import Emulator
from l1forge.models.fixed import Fixed
from l1forge.models.hgq import HGQStudent, fine_tune
from l1forge.models.vectors import bitexact_vectors


def student_ir(seed: int = 0, n_in: int = 57, hidden: int = 16) -> object:
    """A student shaped as `l1forge train ad` exports it, with random integer weights."""
    rng = np.random.default_rng(seed)
    w_fmt, b_fmt = Fixed(True, 4, 1), Fixed(True, 5, 1)
    b = NetBuilder("student", n_in, Fixed(True, 16, 16))
    b.scale("scale", rng.integers(-8, 8, n_in), Fixed(True, 7, 7), rng.integers(-2, 6, n_in))
    b.quantize("x_q", Fixed(True, 8, 6), "RND_CONV", "SAT")
    b.dense(
        "dense0", rng.integers(-8, 8, (n_in, hidden)), w_fmt, rng.integers(-16, 16, hidden), b_fmt
    )
    b.relu("relu0", Fixed(False, 10, 6), "RND_CONV", "SAT")
    b.dense(
        "logit_dense",
        rng.integers(-8, 8, (hidden, 1)),
        w_fmt,
        rng.integers(-8, 8, 1),
        Fixed(True, 4, 0),
    )
    b.quantize("logit", Fixed(True, 12, 6), "RND_CONV", "SAT")
    return b.build()


def twin_scores(net: HGQStudent, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(net.quantized_inputs(x)).numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_twin_equals_the_emulator_bit_for_bit(seed):
    ir = student_ir(seed)
    x = bitexact_vectors(ir, 20_000, seed=seed)
    net = HGQStudent(ir)
    with Emulator(ir) as emu:
        want = emu.run_float(x)[:, 0]
    assert np.array_equal(twin_scores(net, x), want)
    with Emulator(net.to_qnet()) as emu:  # exported unchanged: the same network
        assert np.array_equal(emu.run_float(x)[:, 0], want)


def test_a_non_student_network_is_refused():
    with pytest.raises(DataFormatError, match="student IR"):
        HGQStudent(random_mlp(score=True))


def _teacher_data(ir, n: int, seed: int):
    """Inputs and targets: the network's own scores plus a smooth function (to fit)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 400, (n, ir.tensors["x"].size)).astype(np.int64)
    with Emulator(ir) as emu:
        y = emu.run_float(x)[:, 0] + 0.2 * np.tanh(x[:, :4].sum(axis=1) / 800.0)
    return x, y


def test_fine_tune_exports_a_bit_exact_network_and_the_penalty_lowers_the_bits():
    ir = student_ir(3)
    x, y = _teacher_data(ir, 6000, 3)
    data = (x[:5000], y[:5000], x[5000:], y[5000:])
    kw = {"epochs": 3, "batch_size": 512, "progress": False}
    free = fine_tune(ir, *data, penalty=0.0, **kw)
    tight = fine_tune(ir, *data, penalty=5.0, **kw)
    assert tight.ebops < free.ebops
    assert tight.ebops < tight.ebops_start
    assert sum(tight.weight_bits) < sum(free.weight_bits)
    for res in (free, tight):
        xv = bitexact_vectors(res.ir, 5000, seed=9)
        with Emulator(res.ir) as emu:
            want = emu.run_float(xv)[:, 0]
        assert np.array_equal(twin_scores(HGQStudent(res.ir), xv), want)
        assert res.ir.provenance["hgq_weight_bits"] == list(res.weight_bits)


def test_negative_penalty_is_refused():
    ir = student_ir(4)
    x, y = _teacher_data(ir, 100, 4)
    with pytest.raises(DataFormatError, match="penalty"):
        fine_tune(ir, x, y, x, y, penalty=-1.0, epochs=1, progress=False)
