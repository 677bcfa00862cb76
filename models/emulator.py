"""The bit-exact, vectorized emulator of a qnet IR.

Every tensor is held as integer values in float64 (or float32 for a matrix product whose sums
provably stay below 2**24), which is exact because every intermediate is checked, when the
emulator is built, to stay below 2**52 in magnitude. Layers whose bounds do not allow that run
in int64 instead. A chain of element-wise layers (scale, affine, quantize, relu) that starts from a
tensor of at most 16 bits is replaced by a per-feature lookup table computed with the very same
layer code over every possible input value. Batches are cut into cache-sized chunks that run
on a thread pool (with the BLAS library held to one thread each, so the two do not compete).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from l1forge.errors import DataFormatError
from l1forge.models.build import affine_range, dense_range, scale_range, sum_squares_range
from l1forge.models.fixed import FLOAT64_EXACT, Fixed, requantize
from l1forge.models.qnet import Layer, QNet

FLOAT32_EXACT = 2**24
ELEMENTWISE_OPS = ("scale", "affine", "quantize", "relu")
LUT_MAX_INPUT_BITS = 16
Step = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _PlanStep:
    """One step of the fused execution plan: ``fn`` maps tensor ``src`` to tensor ``dst``."""

    src: str
    dst: str
    fn: Step
    takes_int: bool  # a lookup table indexes with the integers themselves


def _lookup_step(src: Fixed, size: int, fns: list[Step]) -> Step:
    """A per-feature table of ``fns`` applied in turn to every value of ``src``."""
    values = np.arange(src.min_int, src.max_int + 1, dtype=np.float64)
    table = np.repeat(values[:, None], size, axis=1)
    for fn in fns:
        table = fn(table)
    flat = np.ascontiguousarray(table, dtype=np.float64).ravel()
    column = np.arange(size, dtype=np.intp)
    base = src.min_int

    def step(x: np.ndarray) -> np.ndarray:
        idx = (x - base).astype(np.intp, copy=False) if x.dtype != np.intp else x - base
        idx *= size
        idx += column
        return flat.take(idx)

    return step


def _dense_step(lay: Layer, src: Fixed, dst: Fixed) -> Step:
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
    rounding, overflow = lay.rounding, lay.overflow
    if bound < FLOAT32_EXACT:
        w32, b64 = w_scaled.astype(np.float32), bias.astype(np.float64)

        def step(x: np.ndarray) -> np.ndarray:
            acc = (x.astype(np.float32) @ w32).astype(np.float64)
            acc += b64
            return requantize(acc, frac, dst, rounding, overflow, bounds=bounds)

    elif bound < FLOAT64_EXACT:
        w64, b64 = w_scaled.astype(np.float64), bias.astype(np.float64)

        def step(x: np.ndarray) -> np.ndarray:
            acc = x @ w64
            acc += b64
            return requantize(acc, frac, dst, rounding, overflow, bounds=bounds)

    else:

        def step(x: np.ndarray) -> np.ndarray:
            acc = x.astype(np.int64) @ w_scaled + bias
            return _requantize_int(acc, frac, dst, rounding, overflow, lay.name)

    bounds = (lo, hi)
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


def _scale_step(lay: Layer, src: Fixed, dst: Fixed) -> Step:
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
    bounds = scale_range(src, lay.arrays["offset"], o_fmt, shift)[:2]

    def step(x: np.ndarray) -> np.ndarray:
        y = x * x_mult
        y -= offset
        y *= mult
        return requantize(y, frac, dst, lay.rounding, lay.overflow, bounds=bounds)

    return step


def _affine_step(lay: Layer, src: Fixed, dst: Fixed) -> Step:
    m_fmt, a_fmt = lay.array_formats["mult"], lay.array_formats["add"]
    frac = max(src.frac_bits + m_fmt.frac_bits, a_fmt.frac_bits)
    mult = lay.arrays["mult"].astype(np.int64) * (1 << (frac - src.frac_bits - m_fmt.frac_bits))
    add = lay.arrays["add"].astype(np.int64) * (1 << (frac - a_fmt.frac_bits))
    xmax = max(abs(src.min_int), abs(src.max_int))
    bound = int(np.abs(mult).max()) * xmax + int(np.abs(add).max())
    if bound >= 2**62:
        raise DataFormatError(f"layer {lay.name!r}: x * mult + add needs more than 62 bits")
    bounds = affine_range(src, lay.arrays["mult"], m_fmt, lay.arrays["add"], a_fmt)[:2]
    rounding, overflow = lay.rounding, lay.overflow
    if bound < FLOAT64_EXACT:
        m64, a64 = mult.astype(np.float64), add.astype(np.float64)

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
        self._plan = self._fuse()
        # Tensors still needed after each plan step: the outputs and later steps' inputs.
        self._keep = []
        for i in range(len(self._plan)):
            later = {st.src for st in self._plan[i + 1 :]}
            self._keep.append(later | set(net.outputs))
        self._pool: ThreadPoolExecutor | None = None

    def _fuse(self) -> list[_PlanStep]:
        """The layers as plan steps, element-wise chains from narrow tensors as lookup tables."""
        layers, net = self.net.layers, self.net
        readers: dict[str, int] = {}
        for lay in layers:
            readers[lay.input] = readers.get(lay.input, 0) + 1
        plan, i = [], 0
        while i < len(layers):
            lay = layers[i]
            src = net.tensors[lay.input]
            if lay.op in ELEMENTWISE_OPS and src.fixed.width <= LUT_MAX_INPUT_BITS:
                j = i
                while (
                    j + 1 < len(layers)
                    and layers[j + 1].op in ELEMENTWISE_OPS
                    and layers[j + 1].input == layers[j].output
                    and readers.get(layers[j].output, 0) == 1
                    and layers[j].output not in net.outputs
                ):
                    j += 1
                fns = self._steps[i : j + 1]
                step = _lookup_step(src.fixed, src.size, fns)
                plan.append(_PlanStep(lay.input, layers[j].output, step, takes_int=True))
                i = j + 1
            else:
                plan.append(_PlanStep(lay.input, lay.output, self._steps[i], takes_int=False))
                i += 1
        return plan

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

    def _check_range(self, x: np.ndarray) -> None:
        f = self.input_spec.fixed
        if not f.contains(x):
            raise DataFormatError(
                f"emulator input outside {f.hls_type()} (integers {f.min_int}..{f.max_int})"
            )

    def _run_chunk(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self._check_range(x)
        name = self.net.inputs[0]
        vals = {name: x if self._plan[0].takes_int else x.astype(np.float64)}
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
        if self.threads > 1 and len(chunks) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="qnet-emu")
            with threadpool_limits(1, user_api="blas"):
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
