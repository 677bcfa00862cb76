"""qnet IR -> alkaid trace -> pipelined, synthesizable Verilog with the packed bus of packing.py.

The IR is traced layer by layer into alkaid's fixed-point graph; alkaid's own interpreter is
then checked bit for bit against the IR emulator before any Verilog is written. The pipeline has
``latency_cycles`` stages with registered outputs and unregistered inputs, so the output of an
input presented at clock edge t appears after edge t + latency_cycles. A thin adapter module
(``<name>_core``) maps the IR-format bus fields onto alkaid's tighter per-element formats.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.errors import ConfigError, DataFormatError
from l1forge.firmware import packing
from l1forge.firmware.vectors import bench_vectors
from l1forge.models.emulator import Emulator
from l1forge.models.fixed import Fixed, requantize
from l1forge.models.qnet import Layer, QNet

log = logging.getLogger(__name__)

ALKAID_ROUNDING = ("TRN", "RND", "RND_CONV")
COMPOSED_ROUNDING = ("TRN_ZERO", "RND_ZERO", "RND_MIN_INF", "RND_INF")
ALKAID_OVERFLOW = ("WRAP", "SAT", "SAT_SYM")
# adder_size, carry_size, latency_cutoff: alkaid's converter default (carry_size=-1 breaks the
# latency estimate of variable products in alkaid 0.8.2, which then mis-orders the trace).
HWCONF = (1, 1, -1)


class UnsupportedModeError(DataFormatError):
    """The IR asks for a rounding or overflow mode the Verilog generator cannot express."""


def _kif(f: Fixed) -> tuple[int, int, int]:
    """ap_fixed (signed, width, int_bits incl. sign) -> alkaid (k, i excl. sign, f)."""
    return int(f.signed), f.int_bits - int(f.signed), f.frac_bits


def _round_constants(v: Any, dst: Fixed, lay: Layer) -> Any:
    """Constant elements (e.g. behind a zero multiplier) re-quantized exactly here: alkaid 0.8.2
    rounds a constant off the target grid wrongly (RND_CONV of -2.3967 to 1/16 gave -2.5)."""
    from alkaid.trace import FVArray

    elems = np.asarray(v).ravel()
    if not any(e.low == e.high for e in elems):
        return v
    out = []
    for e in elems:
        if e.low == e.high and int(e.kif[2]) > dst.frac_bits:
            f_src = int(e.kif[2])
            q = float(e.low) * 2.0**f_src
            if q != round(q) or abs(q) >= 2**52:
                raise DataFormatError(f"layer {lay.name!r}: constant {e.low} off its own grid")
            r = requantize(np.array([q]), f_src, dst, lay.rounding, lay.overflow)[0]
            e = e + (float(r) * 2.0**-dst.frac_bits - float(e.low))
        out.append(e)
    return FVArray(np.array(out, dtype=object).reshape(v.shape), v.solver_options, hwconf=v.hwconf)


def _requantize(v: Any, dst: Fixed, lay: Layer) -> Any:
    """Re-quantize a traced array to ``dst`` with the layer's ap_fixed rounding and overflow."""
    from alkaid.trace import FVArray

    if lay.overflow not in ALKAID_OVERFLOW:
        raise UnsupportedModeError(
            f"layer {lay.name!r}: overflow mode {lay.overflow} has no alkaid equivalent "
            f"(supported: {', '.join(ALKAID_OVERFLOW)}); re-export the IR with one of those"
        )
    k, i, f = _kif(dst)
    v = _round_constants(v, dst, lay)
    if lay.rounding in ALKAID_ROUNDING:
        return v.quantize(k, i, f, lay.overflow, lay.rounding)
    if lay.rounding not in COMPOSED_ROUNDING:
        raise UnsupportedModeError(f"layer {lay.name!r}: unknown rounding {lay.rounding}")
    # Exact compositions: add a sign-dependent offset, then truncate (floor).
    # With eps the source LSB and half = step/2 of the target:
    #   TRN_ZERO: floor(x + (step - eps)*neg)   RND_MIN_INF: floor(x + half - eps)
    #   RND_INF:  floor(x + half - eps*neg)     RND_ZERO:    floor(x + half - eps*(1 - neg))
    step = 2.0**-f
    out = []
    for e in np.asarray(v).ravel():
        f_src = int(e.kif[2])
        if f_src <= f or e.low == e.high:
            out.append(e)
            continue
        eps = 2.0**-f_src
        neg = e.is_negative()
        if lay.rounding == "TRN_ZERO":
            e = e + neg * step - neg * eps
        elif lay.rounding == "RND_MIN_INF":
            e = e + (step / 2 - eps)
        elif lay.rounding == "RND_INF":
            e = e + step / 2 - neg * eps
        else:
            e = e + (step / 2 - eps) + neg * eps
        out.append(e)
    arr = FVArray(np.array(out, dtype=object).reshape(v.shape), v.solver_options, hwconf=v.hwconf)
    return arr.quantize(k, i, f, lay.overflow, "TRN")


def trace_qnet(net: QNet) -> tuple[Any, Any]:
    """Trace the IR into alkaid symbols: (input array, output array in ``net.outputs`` order)."""
    from alkaid.trace import FVArrayInput, HWConfig

    if len(net.inputs) != 1:
        raise DataFormatError("the Verilog generator handles networks with one input tensor")
    spec = net.input_specs[0]
    inp = FVArrayInput(spec.size, hwconf=HWConfig(*HWCONF))
    vals = {spec.name: inp.quantize(*_kif(spec.fixed))}
    for lay in net.layers:
        src, dst = vals[lay.input], net.tensors[lay.output].fixed
        if lay.op == "quantize":
            y = src
        elif lay.op == "dense":
            wf, bf = lay.array_formats["weight"], lay.array_formats["bias"]
            w = lay.arrays["weight"].astype(np.float64)
            b = lay.arrays["bias"].astype(np.float64) * 2.0**-bf.frac_bits
            y = (src @ w) * 2.0**-wf.frac_bits + b
        elif lay.op == "relu":
            y = src.relu()
        elif lay.op == "scale":
            of = lay.array_formats["offset"]
            off = lay.arrays["offset"].astype(np.float64) * 2.0**-of.frac_bits
            y = (src - off) * 2.0 ** -lay.arrays["shift"].astype(np.float64)
        elif lay.op == "affine":
            mf, af = lay.array_formats["mult"], lay.array_formats["add"]
            m = lay.arrays["mult"].astype(np.float64) * 2.0**-mf.frac_bits
            a = lay.arrays["add"].astype(np.float64) * 2.0**-af.frac_bits
            y = src * m + a
        elif lay.op == "sum_squares":
            y = np.sum(src**2, keepdims=True)
        else:
            raise DataFormatError(f"layer {lay.name!r}: the Verilog generator has no op {lay.op}")
        vals[lay.output] = _requantize(y, dst, lay)
    out = np.concatenate([np.asarray(vals[n]).ravel() for n in net.outputs])
    from alkaid.trace import FVArray

    return inp, FVArray(out, inp.solver_options, hwconf=inp.hwconf)


def to_comb(net: QNet) -> Any:
    """The IR as an alkaid combinational program (CombLogic)."""
    from alkaid.trace import trace

    inp, out = trace_qnet(net)
    return trace(inp, out)


def optimize_comb(comb: Any) -> Any:
    """alkaid's passes before pipelining; the result's ``latency[1]`` is its delay estimate."""
    from alkaid.trace.passes import add_surrogate, dead_code_elimin, fuse_ternary_adders

    return add_surrogate(dead_code_elimin(fuse_ternary_adders(comb)), _skip_op8_cost=True)


def output_scale(net: QNet) -> np.ndarray:
    """2**frac_bits of every output element, to turn alkaid's real outputs into IR integers."""
    return np.concatenate(
        [np.full(net.tensors[n].size, 2.0 ** net.tensors[n].fixed.frac_bits) for n in net.outputs]
    )


@dataclass(frozen=True)
class InterpreterCheck:
    vectors_compared: int
    mismatches: int


def check_interpreter(
    comb: Any, net: QNet, n_random: int = 20000, seed: int = 0
) -> InterpreterCheck:
    """Compare alkaid's interpreter with the IR emulator on corners + random vectors; raise if any
    output differs."""
    x = bench_vectors(net, n_random, seed)
    with Emulator(net) as emu:
        ref = emu.run(x)
    real_x = x.astype(np.float64) * net.input_specs[0].fixed.lsb  # alkaid takes real values
    got = comb.predict(real_x, n_threads=1) * output_scale(net)
    if not np.all(np.isfinite(got)) or np.any(got != np.round(got)):
        raise DataFormatError("alkaid interpreter returned values off the IR output grid")
    bad = np.flatnonzero(np.any(got.astype(np.int64) != ref, axis=1))
    if bad.size:
        i = int(bad[0])
        raise DataFormatError(
            f"alkaid trace of {net.name!r} differs from the emulator on {bad.size} of {len(x)} "
            f"vectors; first: input {x[i].tolist()} -> {got[i].tolist()} != {ref[i].tolist()}"
        )
    return InterpreterCheck(len(x), 0)


@dataclass(frozen=True)
class RtlBuild:
    """What ``write_verilog`` produced."""

    top: str  # the core module with the packed IR buses
    latency_cycles: int
    clock_mhz: float
    in_bits: int
    out_bits: int
    sources: tuple[str, ...]  # Verilog files relative to the output folder, in compile order
    stage_delay_ns: tuple[float, ...]  # alkaid's estimated combinational delay per stage
    alkaid_cost: float  # alkaid's LUT-equivalent cost estimate
    reg_bits: int
    vectors_checked: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _bit_map(dst_w: int, dst_f: int, src_w: int, src_f: int, src_signed: bool, src: str) -> str:
    """Verilog concatenation for one field: ``src`` (slice expression builder) re-aligned."""
    parts = []
    for b in range(dst_w - 1, -1, -1):
        s = b - dst_f + src_f
        if s < 0 or src_w == 0:
            parts.append("1'b0")
        elif s >= src_w:
            parts.append(src.format(src_w - 1) if src_signed else "1'b0")
        else:
            parts.append(src.format(s))
    return "{" + ", ".join(parts) + "}"


def _core_adapter(name: str, alkaid_top: str, spec: packing.PackingSpec, fsm: Any) -> str:
    """Verilog of ``<name>_core``: IR-format packed buses around alkaid's model ports."""
    in_prec = fsm.inp_signals[0].precisions
    out_prec = fsm.out_signals[0].precisions
    w_in = sum(sum(p) for p in in_prec)
    w_out = sum(sum(p) for p in out_prec)
    lines = []
    off = 0
    fields = [f for s in spec.input.slots for f in s.fields()]
    for fld, p in zip(fields, in_prec, strict=True):
        w = sum(p)
        if w:
            expr = _bit_map(
                w,
                p.fractional,
                fld["width"],
                fld["frac_bits"],
                fld["signed"],
                f"in_data[{fld['offset']} + {{}}]",
            )
            lines.append(f"    assign model_inp[{off + w - 1}:{off}] = {expr};")
        off += w
    off = 0
    fields = [f for s in spec.output.slots for f in s.fields()]
    for fld, p in zip(fields, out_prec, strict=True):
        w = sum(p)
        lo = fld["offset"]
        expr = _bit_map(
            fld["width"],
            fld["frac_bits"],
            w,
            p.fractional,
            bool(p.signed),
            f"model_out[{off} + {{}}]",
        )
        lines.append(f"    assign out_data[{lo + fld['width'] - 1}:{lo}] = {expr};")
        off += w
    body = "\n".join(lines)
    return f"""`timescale 1 ns / 1 ps
// Generated by l1forge.firmware.verilog from qnet {spec.network!r}: IR-format buses
// (see packing.json) around the alkaid pipeline {alkaid_top}.
module {name}_core (
    input wire clk,
    // verilator lint_off UNUSEDSIGNAL
    input wire [{spec.input.bits - 1}:0] in_data,
    // verilator lint_on UNUSEDSIGNAL
    output wire [{spec.output.bits - 1}:0] out_data
);
    wire [{max(w_in, 1) - 1}:0] model_inp;
    // verilator lint_off UNUSEDSIGNAL
    wire [{max(w_out, 1) - 1}:0] model_out;
    // verilator lint_on UNUSEDSIGNAL
{body}
    {alkaid_top} u_model (.clk(clk), .model_inp(model_inp), .model_out(model_out));
endmodule
"""


def write_verilog(
    net: QNet,
    out_dir: str | Path,
    latency_cycles: int | None = 2,
    clock_mhz: float = 40.0,
    beat_bits: int = packing.DEFAULT_BEAT_BITS,
    n_check: int = 20000,
    name: str | None = None,
) -> RtlBuild:
    """Write ``out_dir/rtl/*.v`` for ``net``; ``latency_cycles=None`` picks the fewest stages whose
    estimated delay fits the clock period. Raises if alkaid's interpreter disagrees with the IR."""
    from alkaid.codegen import RTLModel
    from alkaid.trace.pipeline import to_pipeline

    if clock_mhz <= 0 or not math.isfinite(clock_mhz):
        raise ConfigError(f"clock_mhz must be positive, got {clock_mhz}")
    if latency_cycles is not None and latency_cycles < 1:
        raise ConfigError(f"latency_cycles must be at least 1, got {latency_cycles}")
    name = name or _identifier(net.name)
    out_dir = Path(out_dir)
    period_ns = 1000.0 / clock_mhz
    comb = to_comb(net)
    check = check_interpreter(comb, net, n_check)
    log.info("alkaid interpreter == emulator on %d vectors", check.vectors_compared)
    comb = optimize_comb(comb)
    total_ns = float(comb.latency[1])
    if latency_cycles is None:
        latency_cycles = max(1, math.ceil(total_ns / period_ns))
    # latency_cycles logic stages, each ending in a register; the input bus is taken as driven
    # by upstream registers, as in a trigger chain, so it is not registered again here.
    fsm = to_pipeline(comb, n_stages=latency_cycles, reg_inp=False, reg_out=True, verbose=False)
    ends = [0.0] + [float(c.latency[1]) for c in fsm.logic.values()]
    stage_ns = tuple(float(b - a) for a, b in itertools.pairwise(ends))
    if max(stage_ns, default=0.0) > period_ns:
        log.warning(
            "estimated stage delay %.2f ns exceeds the %.2f ns clock period; ask for more cycles",
            max(stage_ns),
            period_ns,
        )
    work = out_dir / "alkaid"
    if work.exists():
        shutil.rmtree(work)
    alkaid_top = f"{name}_model"
    model = RTLModel(
        fsm,
        work,
        prj_name=alkaid_top,
        ternary_fuse=False,
        print_latency=False,
        clock_period=period_ns,
    )
    model.write()
    rtl = out_dir / "rtl"
    rtl.mkdir(parents=True, exist_ok=True)
    sources = []
    for src in sorted((work / "src" / "static").glob("*.v")) + sorted((work / "src").glob("*.v")):
        if src.name == f"{alkaid_top}_wrapper.v":
            continue  # alkaid's own unpadded-bus wrapper: ours is the core adapter below
        # alkaid names its stage modules logic0, logic1, ...: prefix them with the network name
        text = re.sub(r"\blogic(\d+)\b", rf"{name}_logic\1", src.read_text())
        dst = re.sub(r"^logic(\d+)\.v$", rf"{name}_logic\1.v", src.name)
        (rtl / dst).write_text(text)
        sources.append(f"rtl/{dst}")
    spec = packing.packing_from_qnet(net, beat_bits)
    (rtl / f"{name}_core.v").write_text(_core_adapter(name, alkaid_top, spec, fsm))
    sources.append(f"rtl/{name}_core.v")
    meta = json.loads((work / "metadata.json").read_text())
    build = RtlBuild(
        top=f"{name}_core",
        latency_cycles=latency_cycles,
        clock_mhz=clock_mhz,
        in_bits=spec.input.bits,
        out_bits=spec.output.bits,
        sources=tuple(sources),
        stage_delay_ns=stage_ns,
        alkaid_cost=float(meta.get("cost", comb.cost)),
        reg_bits=int(model.reg_bits),
        vectors_checked=check.vectors_compared,
    )
    return build


def _identifier(text: str) -> str:
    ident = "".join(c if c.isalnum() or c == "_" else "_" for c in text).lower()
    return ident if ident and ident[0].isalpha() else f"net_{ident}"
