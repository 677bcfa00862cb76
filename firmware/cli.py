"""`l1forge firmware build|report|hls-build|patterns`: firmware folders from a qnet IR, their
reports, and pattern files (packed input and expected output words) for board tests."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("firmware", help="Verilog, wrappers and reports from a qnet IR")
    sub = parser.add_subparsers(dest="firmware_command", required=True)

    b = sub.add_parser("build", help="write Verilog, wrappers, packing and manifest into DIR")
    b.add_argument("qnet", help="qnet IR JSON file")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument(
        "--latency-cycles",
        type=int,
        default=None,
        help="pipeline depth in clocks (default: fewest that fit the clock)",
    )
    b.add_argument("--clock-mhz", type=float, default=40.0, help="clock frequency (MHz)")
    b.add_argument("--axis-beat-bits", type=int, default=64, help="AXI-stream TDATA width")
    b.add_argument("--no-hls", action="store_true", help="do not write the hls4ml project")
    b.add_argument(
        "--hls-csim-vectors",
        type=int,
        default=2000,
        help="vectors for the hls4ml C-sim vs emulator check (0: write the project only)",
    )
    b.add_argument("--part", default=None, help="FPGA part of the hls4ml project")
    b.add_argument("--no-lint", action="store_true", help="skip Verilator/Icarus checks")
    b.add_argument(
        "--check-vectors",
        type=int,
        default=20000,
        help="random vectors for the alkaid-vs-emulator check",
    )
    b.add_argument(
        "--registers",
        action="store_true",
        help="AXI4-Lite register bank: seed thresholds and run-time input offsets/shifts",
    )
    b.add_argument(
        "--seeds", type=int, default=8, help="threshold registers with --registers (default 8)"
    )
    b.set_defaults(func=_build)

    r = sub.add_parser("report", help="latency and yosys resources of a firmware folder")
    r.add_argument("dir", help="folder written by `l1forge firmware build`")
    r.add_argument("--allow-dsp", action="store_true", help="let yosys infer DSP48E2 blocks")
    r.add_argument("--timeout", type=float, default=3600.0, help="yosys timeout (s)")
    r.set_defaults(func=_report)

    p = sub.add_parser("patterns", help="pattern files for board tests and vendor simulators")
    psub = p.add_subparsers(dest="patterns_command", required=True)
    w = psub.add_parser("write", help="input.pattern + expected.pattern (emulator) of N events")
    w.add_argument("--qnet", required=True, help="qnet IR JSON file")
    w.add_argument("--events", required=True, help="event file (l1forge HDF5 or ROOT)")
    w.add_argument("--n", type=int, default=1000, help="events (from the first; default 1000)")
    w.add_argument("--firmware", help="firmware folder whose packing.json to use")
    w.add_argument("--out", required=True, help="output folder")
    w.set_defaults(func=_patterns_write)
    c = psub.add_parser(
        "compare", help="a captured output pattern against the emulator (exit 1 on a difference)"
    )
    c.add_argument("captured", help="captured output pattern file")
    c.add_argument("--expected", help="expected output pattern (from `patterns write`)")
    c.add_argument("--inputs", help="input pattern the outputs were captured for")
    c.add_argument("--qnet", help="qnet IR to emulate the input pattern with")
    c.set_defaults(func=_patterns_compare)

    h = sub.add_parser("hls-build", help="run Vitis HLS synthesis of DIR's hls4ml project")
    h.add_argument("dir", help="folder written by `l1forge firmware build` (or its hls/)")
    h.add_argument("--timeout", type=float, default=4 * 3600.0, help="synthesis timeout (s)")
    h.set_defaults(func=_hls_build)


def _build(args: argparse.Namespace) -> int:
    from l1forge.errors import ConfigError
    from l1forge.firmware.build import BuildOptions, build
    from l1forge.models.qnet import load

    if args.check_vectors < 0:
        raise ConfigError("--check-vectors must be >= 0")
    if args.hls_csim_vectors < 0:
        raise ConfigError("--hls-csim-vectors must be >= 0")
    part = {"part": args.part} if args.part else {}
    net = load(args.qnet)
    manifest = build(
        net,
        args.out,
        BuildOptions(
            latency_cycles=args.latency_cycles,
            clock_mhz=args.clock_mhz,
            beat_bits=args.axis_beat_bits,
            hls=not args.no_hls,
            lint=not args.no_lint,
            n_check=args.check_vectors,
            hls_csim_vectors=args.hls_csim_vectors,
            registers=args.registers,
            seeds=args.seeds,
            **part,
        ),
    )
    shown = {
        "name": manifest["name"],
        "latency_cycles": manifest["latency_cycles"],
        "clock_mhz": manifest["clock_mhz"],
        "latency_ns": manifest["latency_ns"],
        "initiation_interval": manifest["initiation_interval"],
        "hls": manifest["hls"],
        "registers": manifest["registers"],
        "out": str(args.out),
    }
    print(json.dumps(shown))
    return 0


def _report(args: argparse.Namespace) -> int:
    from l1forge.firmware.report import report

    out = report(args.dir, allow_dsp=args.allow_dsp, timeout=args.timeout)
    keys: tuple[str, ...] = (
        "latency_cycles",
        "latency_ns",
        "clock_mhz",
        "initiation_interval",
        "resources",
    )
    if "register_bank" in out:
        keys += ("register_bank",)
    print(json.dumps({k: out[k] for k in keys} | {"target": out["target"]}))
    return 0


def _patterns_write(args: argparse.Namespace) -> int:
    from pathlib import Path

    from l1forge.errors import ConfigError, DataFormatError
    from l1forge.firmware import packing, patterns
    from l1forge.models.eventfiles import open_event_file
    from l1forge.models.qnet import load

    if args.n < 1:
        raise ConfigError("--n must be >= 1")
    net = load(args.qnet)
    spec = None
    if args.firmware:
        spec = packing.load(Path(args.firmware) / "packing.json")
        if spec.network != net.name or spec.input.n_values != net.input_specs[0].size:
            raise DataFormatError(
                f"{args.firmware}/packing.json describes network {spec.network!r}, "
                f"{args.qnet} is {net.name!r}"
            )
    ef = open_event_file(args.events)
    n_in = net.input_specs[0].size
    chunk = next(ef.chunks(args.n), None)
    if chunk is None:
        raise DataFormatError(f"{ef.path}: no events")
    if chunk.inputs.shape[1] != n_in:
        raise DataFormatError(
            f"{args.qnet}: network takes {n_in} inputs, events in {ef.path} have "
            f"{chunk.inputs.shape[1]}"
        )
    fmt = net.input_specs[0].fixed
    if not fmt.contains(chunk.inputs):
        raise DataFormatError(f"{ef.path}: inputs outside the IR's format {fmt.hls_type()}")
    source = f"{ef.path} rows 0..{len(chunk) - 1}"
    paths = patterns.write_patterns(args.qnet, chunk.inputs.astype("int64"), args.out, spec, source)
    print(json.dumps({"events": len(chunk)} | {k: str(v) for k, v in paths.items()}))
    return 0


def _patterns_compare(args: argparse.Namespace) -> int:
    import sys

    from l1forge.errors import ConfigError
    from l1forge.firmware import patterns

    if args.expected and not (args.inputs or args.qnet):
        result = patterns.compare_expected(args.captured, args.expected)
    elif args.inputs and args.qnet and not args.expected:
        result = patterns.compare_emulator(args.captured, args.inputs, args.qnet)
    else:
        raise ConfigError("give either --expected, or --inputs and --qnet")
    for line in result.first_differences:
        print(f"l1forge firmware patterns compare: {line}", file=sys.stderr)
    print(json.dumps(result.to_json() | {"captured": args.captured}))
    return 0 if result.ok else 1


def _hls_build(args: argparse.Namespace) -> int:
    from l1forge.firmware.hls_build import hls_build

    out = hls_build(args.dir, timeout=args.timeout)
    print(json.dumps(out))
    return 0
