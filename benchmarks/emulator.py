"""Events/s of the qnet emulator vs hls4ml's compiled C simulation and QKeras predict.

By default the reference encoder (``l1forge.models.reference``: the default 57 -> 32 -> 16 -> 3
anomaly detector, score = sum(mu**2), trained on a fixed-seed Pythia sample, cached under
``out/reference``; a few minutes to build on first use); ``--random`` takes the same shape with
weights from one epoch on Gaussian noise. Every compared output must be equal. Also: the
emulator on one thread, its kernel plan (`Emulator.plan`), and numpy's float32 matrix-product
peak in the same run, from which ``roofline_fraction`` = the emulator's useful GFLOP/s
(2 x multiply-accumulates x events/s) over that peak. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time

import numpy as np


def _rate(fn, x: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    y = fn(x)  # warm-up (and the result to compare)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return len(x) / best, y


def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """numpy's float32 matrix product on (n, n) operands with ``threads`` BLAS threads: the
    best of ``repeats`` in GFLOP/s (2 n**3 operations each), the roofline of a dense kernel."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, n, n)).astype(np.float32)
    with threadpool_limits(threads, user_api="blas"):
        a @ b
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def multiply_accumulates(net) -> int:
    """Multiply-accumulates per event of the dense layers (2,384 for the default encoder)."""
    return sum(int(np.prod(lay.arrays["weight"].shape)) for lay in net.layers if lay.op == "dense")


def _random_network():
    """The default shape with weights from one epoch on Gaussian noise (``--random``)."""
    import tensorflow as tf

    from l1forge.models import networks
    from l1forge.models.config import NetConfig

    cfg = NetConfig()
    rng = np.random.default_rng(0)
    x_fit = np.rint(rng.normal(0, 200, (4096, cfg.n_inputs)))
    scaling = networks.fit_input_scaling(x_fit)
    tf.keras.utils.set_random_seed(0)
    m = networks.vae_models(cfg, scaling, beta_kl=0.5)
    m.vae.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    m.vae.fit(x_fit.astype(np.float32), epochs=1, batch_size=256, verbose=0)
    return networks.deploy_model(cfg, scaling, m.hardware)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--random", action="store_true", help="a random-weight network instead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from l1forge.models import hls, networks
    from l1forge.models.emulator import Emulator
    from l1forge.models.export import export_qnet
    from l1forge.models.reference import reference_deploy_model, reference_encoder
    from l1forge.models.vectors import bitexact_vectors

    if args.random:
        deploy, source = _random_network(), "random"
        description = "57-32-16-3 VAE encoder + sum(mu^2), one epoch on Gaussian noise"
    else:
        ref = reference_encoder()
        deploy, source, description = reference_deploy_model(ref), "trained", ref.describe()
    net = export_qnet(deploy, name="default_encoder")
    emu = Emulator(net)
    x_big = bitexact_vectors(net, 2_000_000, seed=1)
    x_cmp = x_big[:200_000]
    with tempfile.TemporaryDirectory() as tmp:
        hm = hls.compile_csim(hls.convert(deploy, tmp, project_name="bench_encoder"))
        print("measuring hls4ml predict", file=sys.stderr)
        hls_rate, y_hls = _rate(lambda v: hls.predict(hm, v), x_cmp, 1)
    print("measuring QKeras predict", file=sys.stderr)
    qk_rate, y_qk = _rate(lambda v: networks.exact_predict(deploy, v, 16384), x_cmp, 1)
    print("measuring emulator", file=sys.stderr)
    emu_rate, _ = _rate(emu.run_float, x_big, 3)
    y_emu = emu.run_float(x_cmp)
    plan = emu.plan()
    emu.close()
    with Emulator(net, threads=1) as emu1:
        emu1_rate, _ = _rate(emu1.run_float, x_big[:1_000_000], 2)
    print("measuring the float32 matrix-product peak", file=sys.stderr)
    peak = matmul_peak_gflops(threads=emu.threads)
    macs = multiply_accumulates(net)
    gflops = emu_rate * 2 * macs / 1e9
    bit_exact = bool(np.array_equal(y_emu, y_hls) and np.array_equal(y_emu, y_qk))
    result = {
        "network": description,
        "network_source": source,
        "emulator_events_per_s": emu_rate,
        "hls4ml_events_per_s": hls_rate,
        "qkeras_events_per_s": qk_rate,
        "speedup_vs_hls4ml": emu_rate / hls_rate,
        "speedup_vs_qkeras": emu_rate / qk_rate,
        "emulator_1thread_events_per_s": emu1_rate,
        "threads": emu.threads,
        "multiply_accumulates_per_event": macs,
        "emulator_gflops": gflops,
        "matmul_peak_gflops_f32": peak,
        "roofline_fraction": gflops / peak,
        "events_per_s_at_f32_peak": peak * 1e9 / (2 * macs),
        "kernel_plan": plan,
        "n_emulator_events": len(x_big),
        "n_compared": len(x_cmp),
        "bit_exact": bit_exact,
    }
    print(json.dumps(result))
    return 0 if bit_exact else 1


if __name__ == "__main__":
    sys.exit(main())
