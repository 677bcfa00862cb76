"""The bit-exact, vectorized emulator of a qnet IR.

Every tensor is held as integer values in float32 (when its format fits 24 bits) or float64,
which is exact because every intermediate is checked, when the emulator is built, to stay
below 2**52 in magnitude (2**24 for a float32 matrix product). The layers run as a plan of
fused steps (`Emulator.plan`): a dense layer is one matrix product (float32 BLAS when its sums
provably stay below 2**24, float64 below 2**52) whose bias, re-quantization and the ReLU /
quantize layers after it run in one compiled pass (`models.kernels`); a scale, affine, quantize
or ReLU layer and those after it are one such pass too. Layers whose bounds do not allow that
run in int64, layer by layer. Batches are cut into cache-sized chunks that run on a pool of
``threads`` threads, each product on one BLAS thread (so the two do not compete, and an
emulator of one thread uses one core, as a worker process that owns one core expects).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from l1forge.errors import DataFormatError
from l1forge.models import kernels
from l1forge.models.build import affine_range, dense_range, scale_range, sum_squares_range
from l1forge.models.fixed import FLOAT64_EXACT, Fixed, requantize
from l1forge.models.qnet import Layer, QNet

FLOAT32_EXACT = 2**24
FUSABLE_TAIL_OPS = ("quantize", "relu")  # run in the epilogue of the step before them
Step = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _PlanStep:
    """One step of the execution plan: ``fn`` maps tensor ``src`` to tensor ``dst``."""

    src: str
    dst: str
    fn: Step
    kernel: str  # what runs it (see `Emulator.plan`)
    layers: tuple[str, ...]


@dataclass(frozen=True)
class _Head:
    """The first layer of a fused step: what it computes before its element-wise pass
    (``pre``: a matrix product or a sum of squares, or nothing), the pass's per-feature
    ``x * a + b`` and its own re-quantization."""

    kernel: str
    pre: Step | None
    a: np.ndarray
    b: np.ndarray
    stage: kernels.Stage


def _fits_float32(fmt: Fixed) -> bool:
    return max(abs(fmt.min_int), abs(fmt.max_int)) <= FLOAT32_EXACT


@dataclass(frozen=True)
class _DenseParams:
    """A dense layer in integers: ``x @ weight + bias`` at ``frac`` fraction bits."""

    frac: int
    weight: np.ndarray  # int64, scaled to frac
    bias: np.ndarray  # int64, scaled to frac
    bound: int  # |accumulator| < bound
    bounds: tuple[int, int]  # the accumulator's proven range


def _dense_params(lay: Layer, src: Fixed) -> _DenseParams:
    w_fmt, b_fmt = lay.array_formats["weight"], lay.array_formats["bias"]
    w = lay.arrays["weight"].astype(np.int64)
    frac = max(src.frac_bits + w_fmt.frac_bits, b_fmt.frac_bits)
    w_scaled = w * (1 << (frac - src.frac_bits - w_fmt.frac_bits))
    bias = lay.arrays["bias"].astype(np.int64) * (1 << (frac - b_fmt.frac_bits))
    xmax = max(abs(src.min_int), abs(src.max_int))
    bound = int(np.abs(w_scaled).sum(axis=0).max()) * xmax + int(np.abs(bias).max())
    lo, hi, _ = dense_range(src, lay.arrays["weight"], w_fmt, lay.arrays["bias"], b_fmt)
    if bound >= 2**62:
        raise DataFormatError(f"layer {lay.name!r}: accumulator needs more than 62 bits")
    return _DenseParams(frac, w_scaled, bias, bound, (lo, hi))


def _dense_step(lay: Layer, src: Fixed, dst: Fixed) -> Step:
    d = _dense_params(lay, src)
    frac, bounds = d.frac, d.bounds
    rounding, overflow = lay.rounding, lay.overflow
    if d.bound < FLOAT32_EXACT:
        w32, b64 = d.weight.astype(np.float32), d.bias.astype(np.float64)

        def step(x: np.ndarray) -> np.ndarray:
            acc = (x.astype(np.float32) @ w32).astype(np.float64)
            acc += b64
            return requantize(acc, frac, dst, rounding, overflow, bounds=bounds)

    elif d.bound < FLOAT64_EXACT:
        w64, b64 = d.weight.astype(np.float64), d.bias.astype(np.float64)

        def step(x: np.ndarray) -> np.ndarray:
            acc = x @ w64
            acc += b64
            return requantize(acc, frac, dst, rounding, overflow, bounds=bounds)

    else:
        w_scaled, bias = d.weight, d.bias

        def step(x: np.ndarray) -> np.ndarray:
            acc = x.astype(np.int64) @ w_scaled + bias
            return _requantize_int(acc, frac, dst, rounding, overflow, lay.name)

    return step


def _requantize_int(
    acc: np.ndarray, frac: int, dst: Fixed, rounding: str, overflow: str, name: str
) -> np.ndarray:
    """Re-quantize int64 accumulators that may exceed 2**53 by dropping exact low bits first."""
    shift = frac - dst.frac_bits
    if shift <= 0 or rounding != "TRN":
        raise DataFormatError(
            f"layer {name!r}: accumulator exceeds 2**53; only truncation to a coarser format is "
            "supported at this width"
        )
    if dst.width > 52:
        raise DataFormatError(f"layer {name!r}: output {dst.hls_type()} is wider than 52 bits")
    q = acc >> shift  # floor: truncation, exact in int64
    lo, hi = dst.min_int, dst.max_int
    if overflow == "WRAP":
        q = ((q - lo) & ((1 << dst.width) - 1)) + lo
    elif overflow == "SAT":
        q = np.clip(q, lo, hi)
    elif overflow == "SAT_SYM":
        q = np.clip(q, -hi if dst.signed else lo, hi)
    else:  # SAT_ZERO
        q = np.where((q < lo) | (q > hi), 0, q)
    return q.astype(np.float64)  # within dst (<= 62 bits) and used as integers from here on


@dataclass(frozen=True)
class _PerFeature:
    """A scale or affine layer as ``x * mult + add`` per feature at ``frac`` fraction bits
    (float64, exact: every product and sum stays below 2**52), or None for the int64 path."""

    frac: int
    mult: np.ndarray | None
    add: np.ndarray | None
    bounds: tuple[int, int]


def _scale_params(lay: Layer, src: Fixed) -> _PerFeature:
    """``(x * x_mult - offset) * mult`` as one ``x * (x_mult * mult) - offset * mult`` (powers
    of two: the same integers)."""
    o_fmt = lay.array_formats["offset"]
    shift = lay.arrays["shift"].astype(np.int64)
    base = max(src.frac_bits, o_fmt.frac_bits)
    frac = base + max(int(shift.max()), 0)
    x_mult = float(1 << (base - src.frac_bits))
    offset = lay.arrays["offset"].astype(np.float64) * float(1 << (base - o_fmt.frac_bits))
    mult = np.array([2.0 ** (frac - base - int(s)) for s in shift])
    if np.any(mult < 1):
        raise DataFormatError(f"layer {lay.name!r}: shift values leave no common binary point")
    bound = (max(abs(src.min_int), abs(src.max_int)) * x_mult + np.abs(offset).max()) * mult.max()
    if bound >= FLOAT64_EXACT:
        raise DataFormatError(f"layer {lay.name!r}: scaled inputs exceed 52 bits")
    lo, hi = scale_range(src, lay.arrays["offset"], o_fmt, shift)[:2]
    return _PerFeature(frac, x_mult * mult, -offset * mult, (lo, hi))


def _affine_params(lay: Layer, src: Fixed) -> tuple[_PerFeature, np.ndarray, np.ndarray]:
    """The affine layer per feature, and its int64 multipliers and addends (at ``frac``)."""
    m_fmt, a_fmt = lay.array_formats["mult"], lay.array_formats["add"]
    frac = max(src.frac_bits + m_fmt.frac_bits, a_fmt.frac_bits)
    mult = lay.arrays["mult"].astype(np.int64) * (1 << (frac - src.frac_bits - m_fmt.frac_bits))
    add = lay.arrays["add"].astype(np.int64) * (1 << (frac - a_fmt.frac_bits))
    xmax = max(abs(src.min_int), abs(src.max_int))
    bound = int(np.abs(mult).max()) * xmax + int(np.abs(add).max())
    if bound >= 2**62:
        raise DataFormatError(f"layer {lay.name!r}: x * mult + add needs more than 62 bits")
    lo, hi = affine_range(src, lay.arrays["mult"], m_fmt, lay.arrays["add"], a_fmt)[:2]
    exact = bound < FLOAT64_EXACT
    per = _PerFeature(
        frac,
        mult.astype(np.float64) if exact else None,
        add.astype(np.float64) if exact else None,
        (lo, hi),
    )
    return per, mult, add


def _scale_step(lay: Layer, src: Fixed, dst: Fixed) -> Step:
    p = _scale_params(lay, src)
    frac, a, b, bounds = p.frac, p.mult, p.add, p.bounds

    def step(x: np.ndarray) -> np.ndarray:
        y = x * a
        y += b
        return requantize(y, frac, dst, lay.rounding, lay.overflow, bounds=bounds)

    return step


def _affine_step(lay: Layer, src: Fixed, dst: Fixed) -> Step:
    p, mult, add = _affine_params(lay, src)
    frac, bounds = p.frac, p.bounds
    rounding, overflow = lay.rounding, lay.overflow
    if p.mult is not None and p.add is not None:
        m64, a64 = p.mult, p.add

        def step(x: np.ndarray) -> np.ndarray:
            y = x * m64
            y += a64
            return requantize(y, frac, dst, rounding, overflow, bounds=bounds)

    else:

        def step(x: np.ndarray) -> np.ndarray:
            y = x.astype(np.int64) * mult + add
            return _requantize_int(y, frac, dst, rounding, overflow, lay.name)

    return step


def _sum_squares_step(lay: Layer, src: Fixed, dst: Fixed, size: int) -> Step:
    bounds = sum_squares_range(src, size)[:2]
    if bounds[1] >= FLOAT64_EXACT:
        raise DataFormatError(f"layer {lay.name!r}: sum of squares exceeds 52 bits")
    frac = 2 * src.frac_bits

    def step(x: np.ndarray) -> np.ndarray:
        acc = np.einsum("ij,ij->i", x, x)[:, None]
        return requantize(acc, frac, dst, lay.rounding, lay.overflow, bounds=bounds)

    return step


def _then(first: Step, second: Step) -> Step:
    return lambda x: second(first(x))


def _matmul_f32(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x if x.dtype == np.float32 else x.astype(np.float32)) @ w


def _matmul_f64(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x if x.dtype == np.float64 else x.astype(np.float64)) @ w


def _sum_squares_f32(x: np.ndarray) -> np.ndarray:
    x = x if x.dtype == np.float32 else x.astype(np.float32)
    return np.einsum("ij,ij->i", x, x)[:, None]


def _sum_squares_f64(x: np.ndarray) -> np.ndarray:
    x = x if x.dtype == np.float64 else x.astype(np.float64)
    return np.einsum("ij,ij->i", x, x)[:, None]


@functools.cache
def _blas() -> ThreadpoolController:
    """The process's BLAS thread pools, found once (each limit then costs about 30 us)."""
    return ThreadpoolController()


class Emulator:
    """Runs a qnet IR on batches of integer inputs, bit for bit as the firmware does."""

    def __init__(self, net: QNet, chunk_size: int = 4096, threads: int | None = None):
        if len(net.inputs) != 1:
            raise DataFormatError("the emulator runs networks with a single input tensor")
        self.net = net
        self.input_spec = net.input_specs[0]
        self.output_specs = net.output_specs
        self.chunk_size = chunk_size
        self.threads = threads or min(2, os.cpu_count() or 1)
        self._steps = [self._compile(lay) for lay in net.layers]
        self._input_checked = False  # whether the plan's first pass checks the input range
        self._plan = self._fuse()
        # Tensors still needed after each plan step: the outputs and later steps' inputs.
        self._keep = []
        for i in range(len(self._plan)):
            later = {st.src for st in self._plan[i + 1 :]}
            self._keep.append(later | set(net.outputs))
        self._pool: ThreadPoolExecutor | None = None

    def _fuse(self) -> list[_PlanStep]:
        """The layers as plan steps: each fusable layer with the quantize/ReLU layers after it
        (read by nothing else, not outputs) as one step; the others layer by layer."""
        layers, net = self.net.layers, self.net
        readers: dict[str, int] = {}
        for lay in layers:
            readers[lay.input] = readers.get(lay.input, 0) + 1
        plan, i = [], 0
        while i < len(layers):
            lay = layers[i]
            head = self._head(lay)
            if head is None:
                kind = "int64" if lay.op in ("dense", "affine") else "float64"
                plan.append(_PlanStep(lay.input, lay.output, self._steps[i], kind, (lay.name,)))
                i += 1
                continue
            stages, j = [head.stage], i
            while (
                len(stages) < kernels.MAX_STAGES
                and j + 1 < len(layers)
                and layers[j + 1].op in FUSABLE_TAIL_OPS
                and layers[j + 1].input == layers[j].output
                and readers.get(layers[j].output, 0) == 1
                and layers[j].output not in net.outputs
            ):
                j += 1
                stages.append(self._tail_stage(layers[j]))
            out_fmt = net.tensors[layers[j].output].fixed
            pre = head.pre
            # the pass that reads the network's input first also checks its range
            first = i == 0 and pre is None and lay.input == net.inputs[0]
            check = (self.input_spec.fixed, self._range_message()) if first else None
            fused = kernels.Fused(head.a, head.b, stages, out_fmt, check)
            self._input_checked = self._input_checked or first
            fn = fused if pre is None else _then(pre, fused)
            names = tuple(lay.name for lay in layers[i : j + 1])
            plan.append(_PlanStep(lay.input, layers[j].output, fn, head.kernel, names))
            i = j + 1
        return plan

    def _head(self, lay: Layer) -> _Head | None:
        """``lay`` as the head of a fused step, or None when it runs layer by layer."""
        src = self.net.tensors[lay.input]
        fmt, dst = src.fixed, self.net.tensors[lay.output].fixed
        n = src.size
        ones, zeros = np.ones(n), np.zeros(n)

        def stage(frac: int, bounds: tuple[float, float], relu: bool = False) -> kernels.Stage:
            return kernels.stage(frac, dst, lay.rounding, lay.overflow, bounds, relu=relu)

        whole = (float(fmt.min_int), float(fmt.max_int))
        if lay.op == "quantize":
            return _Head("fused", None, ones, zeros, stage(fmt.frac_bits, whole))
        if lay.op == "relu":
            pos = (max(whole[0], 0.0), max(whole[1], 0.0))
            return _Head("fused", None, ones, zeros, stage(fmt.frac_bits, pos, relu=True))
        if lay.op == "scale":
            p = _scale_params(lay, fmt)
            assert p.mult is not None and p.add is not None
            return _Head("fused", None, p.mult, p.add, stage(p.frac, p.bounds))
        if lay.op == "affine":
            p, _, _ = _affine_params(lay, fmt)
            if p.mult is None or p.add is None:
                return None
            return _Head("fused", None, p.mult, p.add, stage(p.frac, p.bounds))
        if lay.op == "dense":
            d = _dense_params(lay, fmt)
            m = d.weight.shape[1]
            if d.bound < FLOAT32_EXACT and _fits_float32(fmt):
                w32 = d.weight.astype(np.float32)
                pre: Step = functools.partial(_matmul_f32, w=w32)
                kind = "sgemm_f32+fused"
            elif d.bound < FLOAT64_EXACT:
                pre = functools.partial(_matmul_f64, w=d.weight.astype(np.float64))
                kind = "dgemm_f64+fused"
            else:
                return None
            bias = d.bias.astype(np.float64)
            return _Head(kind, pre, np.ones(m), bias, stage(d.frac, d.bounds))
        if lay.op == "sum_squares":
            lo, hi = sum_squares_range(fmt, n)[:2]
            narrow = hi < FLOAT32_EXACT and _fits_float32(fmt)
            pre = _sum_squares_f32 if narrow else _sum_squares_f64
            kind = "sum_squares_f32+fused" if narrow else "sum_squares_f64+fused"
            return _Head(kind, pre, np.ones(1), np.zeros(1), stage(2 * fmt.frac_bits, (lo, hi)))
        return None

    def _tail_stage(self, lay: Layer) -> kernels.Stage:
        """The stage of a quantize or ReLU layer fused after the one before it."""
        fmt = self.net.tensors[lay.input].fixed
        dst = self.net.tensors[lay.output].fixed
        lo, hi = float(fmt.min_int), float(fmt.max_int)
        relu = lay.op == "relu"
        bounds = (max(lo, 0.0), max(hi, 0.0)) if relu else (lo, hi)
        return kernels.stage(fmt.frac_bits, dst, lay.rounding, lay.overflow, bounds, relu=relu)

    def plan(self) -> list[dict[str, object]]:
        """What runs each step: ``layers`` (fused together), ``kernel``: ``sgemm_f32+fused``
        (float32 BLAS product, exact below 2**24, then one compiled pass for bias,
        re-quantization and the layers after it), ``dgemm_f64+fused`` (the same in float64),
        ``fused`` (one compiled element-wise pass), ``sum_squares_f32/f64+fused``, or
        ``int64`` / ``float64`` (layer by layer in numpy, for bounds the fast kernels cannot
        hold)."""
        return [{"layers": list(st.layers), "kernel": st.kernel} for st in self._plan]

    def _compile(self, lay: Layer) -> Step:
        src = self.net.tensors[lay.input]
        dst = self.net.tensors[lay.output].fixed
        if lay.op == "dense":
            return _dense_step(lay, src.fixed, dst)
        if lay.op == "scale":
            return _scale_step(lay, src.fixed, dst)
        if lay.op == "affine":
            return _affine_step(lay, src.fixed, dst)
        if lay.op == "sum_squares":
            return _sum_squares_step(lay, src.fixed, dst, src.size)
        frac, rounding, overflow = src.fixed.frac_bits, lay.rounding, lay.overflow
        bounds = (src.fixed.min_int, src.fixed.max_int)
        relu_bounds = (max(bounds[0], 0), max(bounds[1], 0))
        if lay.op == "relu":
            return lambda x: requantize(
                np.maximum(x, 0.0), frac, dst, rounding, overflow, bounds=relu_bounds
            )
        if lay.op == "quantize":
            return lambda x: requantize(x, frac, dst, rounding, overflow, bounds=bounds)
        raise DataFormatError(f"layer {lay.name!r}: the emulator has no op {lay.op!r}")

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """The batch as an integer array (N, n_in); its value range is checked per chunk."""
        x = np.asarray(x)
        n = self.input_spec.size
        if x.ndim != 2 or x.shape[1] != n:
            raise DataFormatError(f"emulator input must have shape (N, {n}), got {x.shape}")
        if not np.issubdtype(x.dtype, np.integer):
            raise DataFormatError(f"emulator input must be integers, got {x.dtype}")
        return x

    def _range_message(self) -> str:
        f = self.input_spec.fixed
        return f"emulator input outside {f.hls_type()} (integers {f.min_int}..{f.max_int})"

    def _check_range(self, x: np.ndarray) -> None:
        if not self.input_spec.fixed.contains(x):
            raise DataFormatError(self._range_message())

    def _run_chunk(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if not self._input_checked:  # else the first fused pass checks it as it reads it
            self._check_range(x)
        name = self.net.inputs[0]
        fast = self._plan[0].kernel not in ("int64", "float64")  # compiled steps take integers
        vals = {name: x if fast else x.astype(np.float64)}
        for i, st in enumerate(self._plan):
            vals[st.dst] = st.fn(vals[st.src])
            vals = {k: v for k, v in vals.items() if k in self._keep[i]}
        if name in vals:  # a network whose output is its input
            vals[name] = vals[name].astype(np.float64)
        return vals

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Integer values (int64) of every output tensor for a batch of integer inputs."""
        x = self.check_input(x)
        starts = range(0, max(len(x), 1), self.chunk_size)
        chunks = [x[s : s + self.chunk_size] for s in starts]
        with _blas().limit(limits=1, user_api="blas"):
            if self.threads > 1 and len(chunks) > 1:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="qnet-emu")
                parts = list(self._pool.map(self._run_chunk, chunks))
            else:
                parts = [self._run_chunk(c) for c in chunks]
        return {
            name: np.concatenate([p[name] for p in parts]).astype(np.int64)
            for name in self.net.outputs
        }

    def run(self, x: np.ndarray) -> np.ndarray:
        """Output integers (int64, shape (N, total output size)) for integer inputs."""
        outs = self.run_all(x)
        return np.concatenate([outs[n] for n in self.net.outputs], axis=1)

    def run_float(self, x: np.ndarray) -> np.ndarray:
        """Output real values (exact in float64) for integer inputs."""
        outs = self.run_all(x)
        return np.concatenate(
            [self.net.tensors[n].fixed.to_float(outs[n]) for n in self.net.outputs], axis=1
        )

    def trace(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every tensor's integers for a (small) batch: for debugging and layer-wise checks."""
        x = self.check_input(x)
        self._check_range(x)
        vals = {self.net.inputs[0]: x.astype(np.float64)}
        for lay, step in zip(self.net.layers, self._steps, strict=True):
            vals[lay.output] = step(vals[lay.input])
        return {k: v.astype(np.int64) for k, v in vals.items()}

    def close(self) -> None:
        """Stop the worker threads (if any ran); the emulator can still run, single-threaded
        until it starts them again."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
