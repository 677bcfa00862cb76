import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.errors import DataFormatError
from l1forge.models.build import NetBuilder, random_mlp
from l1forge.models.emulator import Emulator
from l1forge.models.fixed import OVERFLOW_MODES, ROUNDING_MODES, Fixed

from .reference import ref_run


def corners(fmt: Fixed, n_in: int) -> np.ndarray:
    """Zero, extremes, ±1 and alternating patterns of the input format."""
    lo, hi = fmt.min_int, fmt.max_int
    rows = [np.full(n_in, v) for v in (0, lo, hi, 1, -1 if fmt.signed else 1)]
    alt = np.where(np.arange(n_in) % 2 == 0, lo, hi)
    rows += [alt, alt[::-1]]
    return np.array(rows, dtype=np.int64)


@pytest.mark.parametrize(
    "kw",
    [
        dict(weight_bits=8, weight_int_bits=1, act_fixed=Fixed(False, 8, 4)),
        dict(weight_bits=4, weight_int_bits=0, act_fixed=Fixed(False, 6, 3)),
        dict(weight_bits=12, weight_int_bits=3, act_fixed=Fixed(False, 10, 6), score=True),
    ],
    ids=["w8", "w4", "w12-score"],
)
def test_emulator_matches_integer_reference(kw):
    net = random_mlp(57, (16, 8), 3, seed=11, **kw)
    fmt = net.input_specs[0].fixed
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.integers(fmt.min_int, fmt.max_int + 1, (1500, 57)), corners(fmt, 57)])
    emu = Emulator(net, chunk_size=256)
    assert_array_equal(emu.run(x), ref_run(net, x))


@pytest.mark.parametrize("rounding", ROUNDING_MODES)
@pytest.mark.parametrize("overflow", OVERFLOW_MODES)
def test_every_mode_in_a_network(rounding, overflow):
    rng = np.random.default_rng(2)
    w_fmt = Fixed(True, 6, 1)
    b = NetBuilder("modes", 6, Fixed(True, 10, 10))
    b.scale("s", rng.integers(-50, 50, 6), Fixed(True, 10, 10), np.array([0, 1, 2, 3, 1, 0]))
    b.quantize("q", Fixed(True, 9, 6), rounding, overflow)
    b.dense("d", rng.integers(-32, 32, (6, 5)), w_fmt, rng.integers(-32, 32, 5), w_fmt)
    b.relu("r", Fixed(False, 5, 3), rounding, overflow)
    b.dense(
        "d2",
        rng.integers(-32, 32, (5, 3)),
        w_fmt,
        rng.integers(-32, 32, 3),
        w_fmt,
        out=Fixed(True, 7, 3),
        rounding=rounding,
        overflow=overflow,
    )
    b.sum_squares("ss", Fixed(False, 8, 6), rounding, overflow)
    net = b.build()
    x = np.concatenate([rng.integers(-512, 512, (2000, 6)), corners(Fixed(True, 10, 10), 6)])
    assert_array_equal(Emulator(net, chunk_size=300).run(x), ref_run(net, x))


def test_wide_accumulators_use_exact_paths():
    # 20-bit inputs times 16-bit weights over 64 inputs: past float32's and near float64's limits
    rng = np.random.default_rng(9)
    wf = Fixed(True, 16, 4)
    b = NetBuilder("wide", 64, Fixed(True, 20, 20))
    b.dense("d", rng.integers(wf.min_int, wf.max_int + 1, (64, 4)), wf, np.zeros(4, int), wf)
    b.quantize("q", Fixed(True, 16, 12), "RND_CONV", "SAT")
    net = b.build()
    x = np.concatenate([rng.integers(-(2**19), 2**19, (500, 64)), corners(Fixed(True, 20, 20), 64)])
    assert_array_equal(Emulator(net).run(x), ref_run(net, x))


def test_chunking_and_threads_do_not_change_results():
    net = random_mlp(57, (32, 16), 3, score=True, seed=4)
    x = np.random.default_rng(0).integers(-8192, 8192, (20000, 57))
    a = Emulator(net, chunk_size=1000, threads=2).run(x)
    b = Emulator(net, chunk_size=50000, threads=1).run(x)
    assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [1, 2])
def test_every_product_runs_on_one_blas_thread(monkeypatch, threads):
    """An emulator of n threads uses n cores: its BLAS products run one BLAS thread each (the
    process's own setting is back after the run), single-threaded emulators included, as a
    worker process that owns one core relies on."""
    from threadpoolctl import threadpool_info

    def blas_threads():  # numpy's BLAS, the one its matrix products run on
        pools = [i for i in threadpool_info() if i["user_api"] == "blas"]
        return {i["num_threads"] for i in pools if "numpy" in i["filepath"]}

    before = blas_threads()
    emu = Emulator(random_mlp(57, (16,), 3, score=True, seed=4), chunk_size=500, threads=threads)
    seen = []
    run_chunk = emu._run_chunk
    monkeypatch.setattr(emu, "_run_chunk", lambda c: (seen.append(blas_threads()), run_chunk(c))[1])
    emu.run(np.zeros((2000, 57), dtype=np.int64))
    emu.close()
    assert seen and all(s == {1} for s in seen)
    assert blas_threads() == before


@pytest.mark.parametrize("threads", [1, 2])
def test_range_is_checked_in_every_chunk_by_the_first_pass(threads):
    """The first fused pass checks the input range as it reads the input: a value one LSB
    outside the format in any chunk is refused, the bounds themselves are not."""
    net = random_mlp(57, (16,), 3, score=True, seed=5)
    emu = Emulator(net, chunk_size=1000, threads=threads)
    assert emu._input_checked  # the plan's first pass reads the input (else numpy checks it)
    fmt = net.input_specs[0].fixed
    x = np.random.default_rng(2).integers(fmt.min_int, fmt.max_int + 1, (5000, 57))
    x[10, 3], x[4321, 56] = fmt.min_int, fmt.max_int
    assert_array_equal(emu.run(x), ref_run(net, x))
    for value in (fmt.min_int - 1, fmt.max_int + 1):
        for row in (0, 2500, 4999):
            bad = x.copy()
            bad[row, 17] = value
            with pytest.raises(DataFormatError, match="outside"):
                emu.run(bad)
    emu.close()


def test_input_validation():
    emu = Emulator(random_mlp(8, (4,), 2))
    with pytest.raises(DataFormatError, match="shape"):
        emu.run(np.zeros((3, 7), dtype=np.int64))
    with pytest.raises(DataFormatError, match="integers"):
        emu.run(np.zeros((3, 8)))
    with pytest.raises(DataFormatError, match="outside"):
        emu.run(np.full((3, 8), 2**20, dtype=np.int64))
    out = emu.run_float(np.ones((3, 8), dtype=np.int64))
    assert out.shape == (3, 2) and out.dtype == np.float64


def test_fused_kernels_equal_the_layer_by_layer_path():
    # random_mlp: input quantizer, then dense + ReLU pairs, then the score, each one fused step
    net = random_mlp(57, (16,), 3, score=True, seed=8)
    emu = Emulator(net, threads=1)
    plan = emu.plan()
    assert plan[0] == {"layers": ["x_q"], "kernel": "fused"} and emu._plan[0].dst == "x_q"
    assert plan[1]["kernel"] in ("sgemm_f32+fused", "dgemm_f64+fused")
    assert len(plan[1]["layers"]) == 2
    fmt = net.input_specs[0].fixed
    x = np.concatenate(
        [
            np.random.default_rng(1).integers(fmt.min_int, fmt.max_int + 1, (5000, 57)),
            corners(fmt, 57),
        ]
    )
    traced = emu.trace(x)  # layer by layer, no tables
    assert_array_equal(emu.run(x), np.concatenate([traced[n] for n in net.outputs], axis=1))


@pytest.mark.parametrize("rounding", ROUNDING_MODES)
@pytest.mark.parametrize("overflow", OVERFLOW_MODES)
def test_affine_in_every_mode(rounding, overflow):
    """x * mult + add with signed, zero and non-power-of-two multipliers, re-quantized."""
    rng = np.random.default_rng(7)
    b = NetBuilder("affine_modes", 6, Fixed(True, 10, 4))
    mult = np.array([-77, 0, 5, 93, -1, 128])
    b.affine("a", mult, Fixed(True, 9, 3), rng.integers(-300, 300, 6), Fixed(True, 10, 2))
    assert b.last_spec.fixed.frac_bits == 12  # exact: 6 + 6 fraction bits
    mult2, zero = np.array([3, -5, 7, 1, -2, 9]), np.zeros(6, int)
    out = Fixed(True, 9, 5)
    b.affine("q", mult2, Fixed(True, 5, 2), zero, Fixed(True, 4, 4), out, rounding, overflow)
    net = b.build()
    x = np.concatenate([rng.integers(-512, 512, (3000, 6)), corners(Fixed(True, 10, 4), 6)])
    emu = Emulator(net, chunk_size=300)
    assert [st["kernel"] for st in emu.plan()] == ["fused", "fused"]  # compiled passes
    assert_array_equal(emu.run(x), ref_run(net, x))
    assert_array_equal(emu.run(x), emu.trace(x)["q"])  # layer by layer in numpy


@pytest.mark.parametrize("overflow", OVERFLOW_MODES)
def test_wide_affine_runs_in_int64(overflow):
    """Products past 2**52 take the int64 path (truncation to a coarser format)."""
    rng = np.random.default_rng(3)
    mf = Fixed(True, 30, 2)
    b = NetBuilder("wide_affine", 4, Fixed(True, 30, 10))
    b.affine("a", rng.integers(mf.min_int, mf.max_int + 1, 4), mf, rng.integers(-99, 99, 4), mf,
             out=Fixed(True, 26, 8), rounding="TRN", overflow=overflow)  # fmt: skip
    net = b.build()
    x = np.concatenate([rng.integers(-(2**29), 2**29, (2000, 4)), corners(Fixed(True, 30, 10), 4)])
    assert_array_equal(Emulator(net).run(x), ref_run(net, x))


@pytest.mark.parametrize("overflow", ["WRAP", "SAT"])
def test_wide_dense_runs_in_int64(overflow):
    """A dense accumulator past 2**52 takes the int64 path and keeps the output's binary point."""
    rng = np.random.default_rng(6)
    wf = Fixed(True, 28, 2)
    b = NetBuilder("wide_dense", 4, Fixed(True, 30, 10))
    w = rng.integers(wf.min_int, wf.max_int + 1, (4, 3))
    b.dense("d", w, wf, rng.integers(-99, 99, 3), wf, Fixed(True, 26, 8), "TRN", overflow)
    net = b.build()
    x = np.concatenate([rng.integers(-(2**29), 2**29, (2000, 4)), corners(Fixed(True, 30, 10), 4)])
    assert_array_equal(Emulator(net).run(x), ref_run(net, x))
