"""Verilog of the run-time register bank: AXI4-Lite slave, shadow/active sets, input scaling
stage and seed comparators (``<name>_regbank``), and the trigger wrapper that puts it around
the constant alkaid core.

The scaling stage computes exactly the emulator's ``scale`` (then ``quantize``) arithmetic from
the active offset/shift registers: ``d = x - offset`` on the common binary point, a barrel shift
by ``shift_hi - shift`` onto ``frac = base + shift_hi``, then the IR's rounding and overflow of
each layer, ending in one register (one pipeline stage). The map is ``registers.RegisterMap``.
"""

from __future__ import annotations

from l1forge.errors import DataFormatError
from l1forge.firmware import registers as regs
from l1forge.firmware.wrappers import _render, _template, trigger_ports, valid_pipe
from l1forge.models.fixed import Fixed

# (direction, width, name) of the AXI4-Lite slave ports (no AxPROT: they are optional)
AXIL_PORTS: tuple[tuple[str, int, str], ...] = (
    ("input", regs.ADDR_BITS, "awaddr"),
    ("input", 1, "awvalid"),
    ("output", 1, "awready"),
    ("input", 32, "wdata"),
    ("input", 4, "wstrb"),
    ("input", 1, "wvalid"),
    ("output", 1, "wready"),
    ("output", 2, "bresp"),
    ("output", 1, "bvalid"),
    ("input", 1, "bready"),
    ("input", regs.ADDR_BITS, "araddr"),
    ("input", 1, "arvalid"),
    ("output", 1, "arready"),
    ("output", 32, "rdata"),
    ("output", 2, "rresp"),
    ("output", 1, "rvalid"),
    ("input", 1, "rready"),
)


def axil_port_decls(indent: str = "    ", last_comma: bool = True) -> str:
    """Port declarations ``s_axil_*``, one a line, comma-separated."""
    out = []
    for d, w, n in AXIL_PORTS:
        rng = f"[{w - 1}:0] " if w > 1 else ""
        out.append(f"{indent}{d:<6} wire {rng}s_axil_{n}")
    return ",\n".join(out) + ("," if last_comma else "")


def axil_connects(indent: str = "        ") -> str:
    return ",\n".join(f"{indent}.s_axil_{n}(s_axil_{n})" for _, _, n in AXIL_PORTS)


def lit(value: int, width: int) -> str:
    """A signed sized Verilog literal holding ``value`` in two's complement."""
    if not -(1 << (width - 1)) <= value <= (1 << (width - 1)) - 1:
        raise DataFormatError(f"{value} does not fit a {width}-bit signed literal")
    return f"{width}'sh{value % (1 << width):x}"


def ext(sig: str, width: int, signed: bool, to: int, msb: str | None = None) -> str:
    """``sig`` sign- (or zero-) extended from ``width`` to ``to`` bits (``msb``: its sign bit,
    when ``sig`` is itself a part select)."""
    if to < width:
        raise DataFormatError(f"cannot extend {sig} from {width} to {to} bits")
    if to == width:
        return sig
    fill = (msb or f"{sig}[{width - 1}]") if signed else "1'b0"
    return f"{{{{{to - width}{{{fill}}}}}, {sig}}}"


def _increment(rounding: str, half: str, rest: str, neg: str, lsb: str) -> str | None:
    """The rounding increment after a floor (None for truncation)."""
    return {
        "TRN": None,
        "RND": half,
        "RND_CONV": f"{half} & ({rest} | {lsb})",
        "TRN_ZERO": f"{neg} & ({half} | {rest})",
        "RND_ZERO": f"{half} & ({rest} | {neg})",
        "RND_INF": f"{half} & ({rest} | ~{neg})",
        "RND_MIN_INF": f"{half} & {rest}",
    }[rounding]


def requantize_verilog(
    p: str, src: str, width: int, frac: int, signed: bool, dst: Fixed, rounding: str, overflow: str
) -> tuple[list[str], str]:
    """Lines computing ``src`` (``width`` bits, ``frac`` fractional) re-quantized to ``dst``
    as ``models.fixed.requantize`` does; returns (lines, name of the ``dst.width``-bit result)."""
    lines: list[str] = []
    a, w = src, width
    if not signed:
        lines.append(f"wire signed [{w}:0] {p}_s = {{1'b0, {a}}};")
        a, w = f"{p}_s", w + 1
    sh = frac - dst.frac_bits
    if sh > 0:
        if w - sh < 2:
            lines.append(f"wire signed [{sh + 1}:0] {p}_x = {ext(a, w, True, sh + 2)};")
            a, w = f"{p}_x", sh + 2
        wq = w - sh
        lines.append(f"wire signed [{wq - 1}:0] {p}_q = {a}[{w - 1}:{sh}];")
        rest = f"(|{a}[{sh - 2}:0])" if sh >= 2 else "1'b0"
        inc = _increment(rounding, f"{a}[{sh - 1}]", rest, f"{a}[{w - 1}]", f"{p}_q[0]")
        if inc is None:
            y, wy = f"{p}_q", wq
        else:
            lines.append(f"wire {p}_inc = {inc};")
            q_ext = f"{{{p}_q[{wq - 1}], {p}_q}}"
            inc_ext = f"{{{{{wq}{{1'b0}}}}, {p}_inc}}"
            lines.append(f"wire signed [{wq}:0] {p}_r = {q_ext} + {inc_ext};")
            y, wy = f"{p}_r", wq + 1
    elif sh < 0:
        lines.append(f"wire signed [{w - sh - 1}:0] {p}_r = {{{a}, {{{-sh}{{1'b0}}}}}};")
        y, wy = f"{p}_r", w - sh
    else:
        y, wy = a, w
    lo, hi = dst.min_int, dst.max_int
    fits = -(1 << (wy - 1)) >= lo and (1 << (wy - 1)) - 1 <= hi
    out = f"{p}_y"
    if overflow == "WRAP" or fits:
        val = f"{y}[{dst.width - 1}:0]" if wy >= dst.width else ext(y, wy, True, dst.width)
        lines.append(f"wire [{dst.width - 1}:0] {out} = {val};")
        return lines, out
    wc = max(wy, dst.width + 1)
    lines.append(f"wire signed [{wc - 1}:0] {p}_e = {ext(y, wy, True, wc)};")
    low = -hi if overflow == "SAT_SYM" and dst.signed else lo
    lines.append(f"wire {p}_over = ($signed({p}_e) > {lit(hi, wc)});")
    lines.append(f"wire {p}_under = ($signed({p}_e) < {lit(low, wc)});")
    keep = f"{p}_e[{dst.width - 1}:0]"
    w = dst.width
    if overflow in ("SAT", "SAT_SYM"):
        hi_v, lo_v = f"{w}'h{hi % (1 << w):x}", f"{w}'h{low % (1 << w):x}"
        val = f"{p}_over ? {hi_v} : ({p}_under ? {lo_v} : {keep})"
    elif overflow == "SAT_ZERO":
        val = f"({p}_over | {p}_under) ? {w}'h0 : {keep}"
    else:
        raise DataFormatError(f"unknown overflow mode {overflow}")
    lines.append(f"wire [{w - 1}:0] {out} = {val};")
    return lines, out


def _signed_width(lo: int, hi: int) -> int:
    w = 1
    while not (-(1 << (w - 1)) <= lo and hi <= (1 << (w - 1)) - 1):
        w += 1
    return w


def scaler_lines(sc: regs.Scaling, off_fmt: Fixed, shift_width: int) -> list[str]:
    """The generate block of the scaling stage, one instance per feature ``j``."""
    x = sc.x
    fs, fo = x.frac_bits, off_fmt.frac_bits
    base = max(fs, fo)
    kx, ko = base - fs, base - fo
    d_lo = (x.min_int << kx) - (off_fmt.max_int << ko)
    d_hi = (x.max_int << kx) - (off_fmt.min_int << ko)
    wd = _signed_width(d_lo, d_hi)
    span = sc.shift_hi - sc.shift_lo
    aw = max(1, span.bit_length())
    wv = wd + span
    sw = shift_width
    body = [
        f"wire [{x.width - 1}:0] x_j = in_data[j*{x.width} +: {x.width}];",
        f"wire [{off_fmt.width - 1}:0] o_j = offset_active[j*{off_fmt.width} +: {off_fmt.width}];",
        f"wire [{sw - 1}:0] s_j = shift_active[j*{sw} +: {sw}];",
    ]

    def aligned(sig: str, w: int, signed: bool, k: int) -> str:
        inner = ext(sig, w, signed, wd - k)
        return f"{{{inner}, {{{k}{{1'b0}}}}}}" if k else inner

    body += [
        f"wire signed [{wd - 1}:0] xa = {aligned('x_j', x.width, x.signed, kx)};",
        f"wire signed [{wd - 1}:0] oa = {aligned('o_j', off_fmt.width, off_fmt.signed, ko)};",
        f"wire signed [{wd - 1}:0] d = xa - oa;",
        f"wire [{sw + 1}:0] amt_s = {lit(sc.shift_hi, sw + 2)} - {ext('s_j', sw, True, sw + 2)};",
        f"wire [{aw - 1}:0] amt = amt_s[{aw - 1}:0];",
        f"wire signed [{wv - 1}:0] dv = {ext('d', wd, True, wv)};",
        f"wire signed [{wv - 1}:0] v = dv << amt;",
    ]
    lay = sc.scale
    body_1, y = requantize_verilog(
        "r1", "v", wv, base + sc.shift_hi, True, sc.scale_out, lay.rounding, lay.overflow
    )
    body += body_1
    if sc.quantize is not None:
        f1 = sc.scale_out
        body_2, y = requantize_verilog(
            "r2",
            y,
            f1.width,
            f1.frac_bits,
            f1.signed,
            sc.out,
            sc.quantize.rounding,
            sc.quantize.overflow,
        )
        body += body_2
    body.append(f"assign scaled_next[j*{sc.out.width} +: {sc.out.width}] = {y};")
    return body


def regbank_verilog(
    name: str, rmap: regs.RegisterMap, sc: regs.Scaling | None, in_bits: int
) -> str:
    """Verilog of ``<name>_regbank``."""
    thr = rmap.reg("THRESHOLD")
    ns, tw = thr.count, thr.width
    score = rmap.score
    sw_score = score.width
    decl, resets, commit_copy, writes, reads, ranges = [], [], [], [], [], []
    params = [thr]
    if sc is not None:
        params += [rmap.reg("OFFSET"), rmap.reg("SHIFT")]
    for r in params:
        key = r.name.lower()
        n_bits = r.count * r.width
        decl.append(f"reg [{n_bits - 1}:0] {key}_shadow;")
        decl.append(f"reg [{n_bits - 1}:0] {key}_active;")
        init = "".join(f"{r.width}'h{v % (1 << r.width):x}, " for v in reversed(r.reset)).rstrip(
            ", "
        )
        decl.append(f"localparam [{n_bits - 1}:0] {r.name}_RESET = {{{init}}};")
        resets.append(f"{key}_shadow <= {r.name}_RESET;")
        resets.append(f"{key}_active <= {r.name}_RESET;")
        cond = "commit_sr[LATENCY-1]" if r.name == "THRESHOLD" else "commit_now"
        commit_copy.append(f"if ({cond}) {key}_active <= {key}_shadow;")
        ranges.append(
            f"wire {key}_ok = ($signed(w_data) >= {lit(r.lo, 32)}) && "
            f"($signed(w_data) <= {lit(r.hi, 32)});"
        )
        for i in range(r.count):
            a = r.addr(i)
            top = (i + 1) * r.width - 1
            sl = f"{key}_shadow[{top}:{i * r.width}]"
            writes.append(
                f"if (do_write && w_ok && aw_addr == 12'h{a:03x} && {key}_ok) "
                f"{sl} <= w_data[{r.width - 1}:0];"
            )
            word = ext(sl, r.width, r.signed, 32, f"{key}_shadow[{top}]")
            reads.append(f"12'h{a:03x}: rd_next = {word};")
    ctrl_reads = [
        f"12'h{regs.CONTROL['ID']:03x}: rd_next = 32'h{regs.ID_VALUE:08x};",
        f"12'h{regs.CONTROL['MAP_VERSION']:03x}: rd_next = 32'd{regs.MAP_VERSION};",
        f"12'h{regs.CONTROL['VERSION']:03x}: rd_next = version;",
        f"12'h{regs.CONTROL['STATUS']:03x}: rd_next = {{31'd0, busy}};",
        f"12'h{regs.INFO['N_SEEDS']:03x}: rd_next = 32'd{ns};",
        f"12'h{regs.INFO['N_FEATURES']:03x}: rd_next = 32'd{rmap.n_features};",
    ]
    # the write is valid when it hits a writable register with an in-range value
    hits = [f"(aw_addr == 12'h{regs.CONTROL['COMMIT']:03x} && w_data == 32'd1)"]
    for r in params:
        key = r.name.lower()
        last = r.addr(r.count - 1)
        hits.append(f"(aw_addr >= 12'h{r.address:03x} && aw_addr <= 12'h{last:03x} && {key}_ok)")
    ce = max(tw, sw_score + 1) + 1
    cmp_lines = [
        f"wire signed [{ce - 1}:0] score_e = {ext('score', sw_score, score.signed, ce)};",
        "genvar i;",
        "generate",
        f"    for (i = 0; i < {ns}; i = i + 1) begin : g_seed",
        f"        wire [{tw - 1}:0] t_i = threshold_active[i*{tw} +: {tw}];",
        f"        wire signed [{ce - 1}:0] t_e = {ext('t_i', tw, True, ce)};",
        "        assign seed_bits[i] = ($signed(score_e) > $signed(t_e));",
        "    end",
        "endgenerate",
    ]
    data_ports = ""
    scale_block = ""
    if sc is not None:
        off, sh = rmap.reg("OFFSET"), rmap.reg("SHIFT")
        of = Fixed(off.signed, off.width, off.width - off.frac_bits)
        out_bits = rmap.n_features * sc.out.width
        data_ports = (
            f"    input  wire [{in_bits - 1}:0] in_data,\n"
            f"    output reg  [{out_bits - 1}:0] scaled_data,\n"
        )
        inner = "\n".join(f"            {ln}" for ln in scaler_lines(sc, of, sh.width))
        scale_block = f"""
    // ---- scaling stage: {" + ".join(sc.layer_names)} from the active offsets and shifts ----
    wire [{out_bits - 1}:0] scaled_next;
    genvar j;
    generate
        for (j = 0; j < {rmap.n_features}; j = j + 1) begin : g_feat
{inner}
        end
    endgenerate
    always @(posedge clk) begin
        scaled_data <= scaled_next;
    end
"""
    return _render(
        _template("regbank.v"),
        {
            "NAME": name,
            "AXIL_PORTS": axil_port_decls(),
            "DATA_PORTS": data_ports,
            "SCORE_BITS": sw_score,
            "N_SEEDS": ns,
            "LATENCY": rmap.latency_cycles,
            "SR_NEXT": "commit_now"
            if rmap.latency_cycles == 1
            else "{commit_sr[LATENCY-2:0], commit_now}",
            "DECLS": _indent(decl),
            "RANGES": _indent(ranges),
            "WRITE_OK": " ||\n        ".join(hits),
            "RESETS": _indent(resets, 12),
            "SHADOW_WRITES": _indent(writes, 12),
            "COMMIT_COPY": _indent(commit_copy, 12),
            "READS": _indent(ctrl_reads + reads, 12),
            "COMPARATORS": _indent(cmp_lines),
            "SCALER": scale_block,
        },
    )


def _indent(lines: list[str], n: int = 4) -> str:
    return "\n".join(" " * n + ln for ln in lines)


def trigger_wrapper_regs(
    name: str,
    rmap: regs.RegisterMap,
    in_bits: int,
    core_in_bits: int,
    core_out_bits: int,
    latency_cycles: int,
) -> str:
    """Verilog of ``<name>_trigger`` with the register bank around ``<name>_core``."""
    scaled = rmap.has_scaling
    return _render(
        _template("trigger_regs_wrapper.v"),
        {
            "NAME": name,
            "CORE": f"{name}_core",
            "LATENCY": latency_cycles,
            "VALID_PIPE": valid_pipe(),
            "CORE_LATENCY": latency_cycles - int(scaled),
            "TRIGGER_PORTS": trigger_ports(in_bits, core_out_bits + rmap.n_seeds),
            "CORE_IN_BITS": core_in_bits,
            "CORE_OUT_BITS": core_out_bits,
            "N_SEEDS": rmap.n_seeds,
            "SCORE_BITS": rmap.score.width,
            "AXIL_PORTS": axil_port_decls(last_comma=False),
            "AXIL_CONNECTS": axil_connects(),
            "SCALE_CONNECTS": "        .in_data(in_data),\n        .scaled_data(core_in),\n"
            if scaled
            else "",
            "CORE_IN_ASSIGN": "" if scaled else "    assign core_in = in_data;\n",
        },
    )


def axis_passthrough() -> tuple[str, str]:
    """(port declarations, trigger connections) that carry the AXI4-Lite slave through the
    AXI-stream wrapper (same names, same clock ``aclk``)."""
    decls = "    input  wire axil_aresetn,\n" + axil_port_decls() + "\n"
    conns = ",\n        .axil_aresetn(axil_aresetn),\n" + axil_connects()
    return decls, conns
