"""Bring-your-own models: each imported, checked bit for bit and turned into sized firmware.

Models (all built here, the first three trained briefly on random data; ``network_source``
says so): the hls4ml tutorial jet tagger (16 -> 64 -> 32 -> 32 -> 5,
quantized_bits(6,0,alpha=1) weights, quantized_relu(6)) imported from QKeras; the same network
(functional API) converted by hls4ml's Keras converter and imported from its ModelGraph; a
float PyTorch MLP converted by hls4ml's PyTorch converter; a QKeras MLP with a general (not
power-of-two, partly negative) BatchNormalization, imported as the IR's affine op with mult/add
in ap_fixed<16,6> (its source is the QKeras model with those rounded constants). For each:
source (QKeras float64 / torch float64) == emulator, hls4ml C-sim == emulator (the project
written from the IR for the QKeras imports, the source ModelGraph for the hls4ml routes), RTL
mismatches on Icarus and Verilator, yosys LUT/DSP and the latency. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.firmware import packing
from l1forge.firmware.build import BuildOptions, build
from l1forge.firmware.report import report
from l1forge.firmware.sim import build_sim, read_stats, run_bench
from l1forge.firmware.vectors import bench_vectors
from l1forge.models import hls
from l1forge.models.emulator import Emulator
from l1forge.models.examples import JET_TAGGER_INPUT_FORMAT, batchnorm_mlp, jet_tagger
from l1forge.models.fixed import Fixed
from l1forge.models.hls4ml_import import convert_keras, import_modelgraph
from l1forge.models.qkeras_import import (
    import_qkeras,
    parse_format,
    reference_model,
    reference_predict,
)
from l1forge.models.vectors import bitexact_vectors

MODELS = ("jet_tagger", "jet_tagger_modelgraph", "torch_mlp", "batchnorm_mlp")
BEAT_BITS = 64
LATENCY = 2


def _pytorch(work: Path):
    import hls4ml
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    m = m.double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.round(p * 32) / 32)
    cfg = hls4ml.utils.config_from_pytorch_model(
        m, input_shape=(16,), granularity="name", backend="Vitis"
    )
    hm = hls4ml.converters.convert_from_pytorch_model(
        m,
        hls_config=cfg,
        output_dir=str(work / "pt_src"),
        project_name="pt_src",
        backend="Vitis",
        io_type="io_parallel",
    )

    def source(xf: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return m(torch.tensor(xf)).numpy()

    return hm, source


def _rtl(net, fw: Path, n: int, work: Path, simulators: list[str]) -> int:
    """Mismatching outputs over Icarus and Verilator runs of ``n`` vectors + corners each."""
    work.mkdir(parents=True, exist_ok=True)
    spec = packing.packing_from_qnet(net, BEAT_BITS)
    x = bench_vectors(net, n, seed=2026)
    with Emulator(net) as emu:
        out_b = packing.pack(emu.run(x), spec.output)
    vec = work / "rtl.npz"
    np.savez(vec, in_bytes=packing.pack(x, spec.input), expected=out_b, out_bytes=out_b.shape[1])
    bad = 0
    for simulator in simulators:
        sim = build_sim(fw, simulator, "trigger", work / f"build_{simulator}")
        tdir = work / f"run_{simulator}"
        env = {
            "L1F_VECTORS": str(vec),
            "L1F_LATENCY": str(LATENCY),
            "L1F_PATTERN": "back_to_back",
            "L1F_SEED": "0",
            "L1F_STATS": str(tdir / "stats.json"),
        }
        run_bench(sim, "l1forge.firmware.bench_trigger", env, tdir, check=False)
        stats = read_stats(tdir)
        if stats["compared"] != len(x):
            raise RuntimeError(f"{simulator}: compared {stats['compared']} of {len(x)}")
        bad += int(stats["mismatches"])
    return bad


def _measure(name, frontend, net, source, csim, args, work: Path) -> dict:
    n, n_rtl = args.vectors, args.rtl_vectors
    log = logging.getLogger("import")
    t0 = time.perf_counter()
    x = bitexact_vectors(net, n, seed=7)
    xf = net.input_specs[0].fixed.to_float(x)
    with Emulator(net) as emu:
        y = emu.run_float(x)
    vs_src = int(np.count_nonzero(np.any(source(xf) != y, axis=1)))
    vs_csim = int(np.count_nonzero(np.any(csim(x, xf) != y, axis=1)))
    log.info("%s: source/C-sim checked on %d vectors", name, len(x))
    fw = work / f"fw_{name}"
    manifest = build(net, fw, BuildOptions(latency_cycles=LATENCY, beat_bits=BEAT_BITS, hls=False))
    rep = report(fw)
    rtl_bad = _rtl(net, fw, n_rtl, work / f"rtl_{name}", args.simulators)
    entry = {
        "name": name,
        "frontend": frontend,
        "vectors": len(x),
        "bit_exact_vs_source": vs_src == 0,
        "source_mismatches": vs_src,
        "bit_exact_vs_hls4ml_csim": vs_csim == 0,
        "rtl_simulators": args.simulators,
        "rtl_vectors_per_simulator": n_rtl + len(bench_vectors(net, 0)),
        "rtl_mismatches": rtl_bad,
        "lut": rep["resources"]["lut"],
        "dsp": rep["resources"]["dsp"],
        "latency_cycles": manifest["latency_cycles"],
        "latency_ns": manifest["latency_ns"],
        "formats": {t: s.fixed.hls_type() for t, s in net.tensors.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log.info("%s done: %s", name, json.dumps({k: v for k, v in entry.items() if k != "formats"}))
    return entry


def _from_qkeras(name: str, model: Any, fmt: Fixed, work: Path):
    """The _models entry of a QKeras model imported as written; C-sim from the IR's project."""
    net = import_qkeras(model, fmt, name=name)
    ref = reference_model(model)
    hm = hls.compile_csim(hls.from_qnet(net, work / f"{name}_ir_hls"))  # written from the IR
    lsb = net.output_specs[0].fixed.lsb
    return (
        name,
        "qkeras",
        net,
        lambda xf: reference_predict(ref, xf),
        lambda x, xf: hls.predict_qnet(hm, net, x) * lsb,
    )


def _models(args: argparse.Namespace, work: Path):
    """(name, frontend, IR, source predict, C-sim predict) of each selected model."""
    fmt = parse_format(JET_TAGGER_INPUT_FORMAT)
    if "jet_tagger" in args.models:
        yield _from_qkeras("jet_tagger", jet_tagger(seed=1, epochs=1), fmt, work)
    if "jet_tagger_modelgraph" in args.models:
        fun = jet_tagger(seed=2, epochs=1, functional=True)
        src = hls.compile_csim(convert_keras(fun, fmt, work / "jet_mg", project_name="jet_mg"))
        ref_f = reference_model(fun)
        yield (
            "jet_tagger_modelgraph",
            "hls4ml-keras",
            import_modelgraph(src, name="jet_tagger_modelgraph"),
            lambda xf: reference_predict(ref_f, xf),
            lambda x, xf: hls.predict(src, xf),
        )
    if "batchnorm_mlp" in args.models:
        yield _from_qkeras("batchnorm_mlp", batchnorm_mlp(seed=4), fmt, work)
    if "torch_mlp" in args.models:
        pt, torch_fn = _pytorch(work)
        pt = hls.compile_csim(pt)
        yield (
            "torch_mlp",
            "hls4ml-pytorch",
            import_modelgraph(pt, name="torch_mlp"),
            torch_fn,
            lambda x, xf: hls.predict(pt, xf),
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vectors", type=int, default=100_000, help="source / C-sim vectors")
    ap.add_argument("--rtl-vectors", type=int, default=5_000, help="RTL vectors per simulator")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--simulators", nargs="+", default=["icarus", "verilator"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # hls4ml's converters print their topology: keep stdout for the one JSON object
    with tempfile.TemporaryDirectory(prefix="l1f-import-") as tmp, redirect_stdout(sys.stderr):
        work = Path(tmp)
        models = [
            _measure(name, frontend, net, source, csim, args, work)
            for name, frontend, net, source, csim in _models(args, work)
        ]
    out = {
        "benchmark": "import",
        "network_source": "built here: tutorial-style jet tagger and a PyTorch MLP, trained "
        "briefly on random data (seeds 1, 2, 0); batch-norm MLP with seeded random constants "
        "(seed 4, l1forge.models.examples.batchnorm_mlp)",
        "models": models,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
