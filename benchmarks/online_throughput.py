"""Events/s of the whole online chain against the emulator alone, with 1 and 2 local workers.

Replay source (as fast as possible, a few thousand real Pythia events looped) -> credit-based
dispatcher -> workers (emulator backend, anomaly-detector-shaped IR) -> menu -> collector ->
ROOT storage. Reports throughput, added latency per batch (source send -> collector receive,
p50/p99), peak RSS of all processes, lost and duplicated events, and the emulator alone on the
same inputs in the same job. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATASET_EVENTS = 3000
DATASET_SEED = 11


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _dataset(cache: Path) -> Path:
    """A few thousand minimum-bias events (pile-up 20), generated once and cached."""
    from l1forge.sim.dataset import write_events
    from l1forge.sim.generate import generate_events

    path = cache / f"bench_minbias_{DATASET_EVENTS}_{DATASET_SEED}.h5"
    if not path.is_file():
        logging.info("generating %d Pythia events for the benchmark (cached)", DATASET_EVENTS)
        write_events(path, generate_events("minbias", DATASET_EVENTS, DATASET_SEED, progress=False))
    return path


def _emulator_alone(ir: Path, x: np.ndarray, threads: int) -> float:
    from l1forge.models import qnet
    from l1forge.models.emulator import Emulator

    emu = Emulator(qnet.load(ir), threads=threads)
    emu.run(x[:16384])
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        emu.run(x)
        best = min(best, time.perf_counter() - t0)
    emu.close()
    return len(x) / best


def _run(tmp: Path, h5: Path, ir: Path, menu, n_workers: int, n_events: int, run: int) -> dict:
    from l1forge.online.config import run_config_from_dict
    from l1forge.online.datapath.pipeline import Pipeline

    cfg = run_config_from_dict(
        {
            "source": {"kind": "replay", "path": str(h5), "loop": True, "n_events": n_events},
            "backend": {"kind": "emulator", "models": {"ad": str(ir)}},
            "workers": {"n": n_workers, "credits": 4, "transport": "ipc"},
            "storage": {"out_dir": str(tmp), "events_per_lumisection": 1 << 22},
            "monitor": {"fraction": 0.05},
            "batch_size": 16384,
            "state_dir": str(tmp / "state"),
        },
        tmp,
    )
    pipe = Pipeline(cfg, run, tmp / f"run{run}", menu=menu)
    pipe.start()
    t0 = time.perf_counter()
    pids = [os.getpid()] + [w["pid"] for w in pipe.status()["workers"].values()]
    cpu0 = cpu1 = [_cpu_s(p) for p in pids]
    peak = 0.0
    while not pipe.dispatcher.drained.wait(0.2):
        peak = max(peak, sum(_rss_mb(p) for p in pids))
        cpu1 = [_cpu_s(p) for p in pids]
    seconds = time.perf_counter() - t0
    summary = pipe.stop()
    return {
        "workers": n_workers,
        "events": summary.n_processed,
        "seconds": seconds,
        "events_per_s": summary.n_processed / seconds,
        "p50_latency_ms": summary.latency_ms.get("p50"),
        "p99_latency_ms": summary.latency_ms.get("p99"),
        "peak_rss_mb": peak,
        "lost": summary.lost,
        "duplicated": summary.duplicated,
        "n_events_in": summary.n_events_in,
        "accepted": summary.n_accepted,
        "files": len(summary.files),
        "source_blocked_s": summary.source_blocked_s,
        "cpu_s_daemon": cpu1[0] - cpu0[0],
        "cpu_s_workers": sum(cpu1[1:]) - sum(cpu0[1:]),
        "error": summary.error,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000, help="events per run")
    ap.add_argument("--cache", default=os.environ.get("L1FORGE_CACHE", "~/.cache/l1forge"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from l1forge.models import qnet
    from l1forge.models.build import random_mlp
    from l1forge.online.datapath.menu import default_menu, zero_bias_scores
    from l1forge.sim.dataset import read_events

    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    h5 = _dataset(cache)
    with tempfile.TemporaryDirectory(prefix="l1f-bench-") as d:
        tmp = Path(d)
        ir = qnet.save(random_mlp(score=True, seed=0, name="bench_ad"), tmp / "ad.json")
        logging.getLogger("l1forge.online.datapath.menu").setLevel(
            logging.ERROR
        )  # few calibration events
        menu = default_menu("ad", None).calibrate(zero_bias_scores({"ad": str(ir)}, str(h5)))
        x = read_events(h5).inputs
        x = np.resize(x, (2_000_000, x.shape[1]))  # the same events, looped
        emu2 = _emulator_alone(ir, x, threads=2)
        emu1 = _emulator_alone(ir, x, threads=1)
        del x  # the pipeline's memory is measured without the reference inputs
        runs = [_run(tmp, h5, ir, menu, n, args.events, run=n) for n in (1, 2)]
    best = max(runs, key=lambda r: r["events_per_s"])
    result = {
        "chain": "replay -> dispatcher -> workers (emulator) -> menu -> collector -> ROOT",
        "network": "random_mlp 57-16-3 + sum of squares (anomaly-detector shaped)",
        "dataset_events": DATASET_EVENTS,
        "batch_size": 16384,
        "events_per_s": best["events_per_s"],
        "workers_best": best["workers"],
        "p50_latency_ms": best["p50_latency_ms"],
        "p99_latency_ms": best["p99_latency_ms"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
        "duplicated": sum(r["duplicated"] for r in runs),
        "one_worker": runs[0],
        "two_workers": runs[1],
        "emulator_alone_events_per_s": emu2,
        "emulator_alone_1thread_events_per_s": emu1,
        "ratio_to_emulator_alone": best["events_per_s"] / emu2,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    print(json.dumps(result))
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
