"""DQM on injected faults: lumisections to flag each fault, false-alarm rate on clean runs.

Minimum-bias Pythia events (pile-up 20, and 40 for the pile-up fault) are generated once and
cached; each lumisection resamples them with replacement (a bootstrap), so clean lumisections
follow the reference distribution exactly and only the statistics' tails make false alarms.
Events go through the online path: hardware units -> ``to_physical`` -> ``DQMMonitor.fill``,
scores from a real qnet (``random_mlp``, emulated), seed bits from score thresholds.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

log = logging.getLogger("dqm_faults")

# Expected (alarm kind, histograms) per fault: the fault counts as flagged at the first
# lumisection with an error-level alarm of that kind in one of those histograms.
EXPECTED = {
    "dead_region": ("dead_region", ("jet/occupancy",)),
    "hot_channel": ("hot_region", ("jet/occupancy",)),
    "energy_scale": ("shifted_input", ("jet/pt", "egamma/pt", "met/pt")),
    "pileup": (
        ("shifted_input", "score_change", "rate_excursion"),
        ("jet/multiplicity", "jet/pt", "met/pt", "score/ad", "trigger/rates"),
    ),
}
SEEDS = (("AD_Loose", 0.10), ("AD_Nominal", 0.02), ("AD_Tight", 0.005))
ZERO_BIAS_PRESCALE = 100
END_LS_SECONDS: list[float] = []  # wall time of every end_lumisection (all comparisons)


def cache_dir() -> Path:
    root = os.environ.get("L1FORGE_CACHE") or Path.home() / ".cache" / "l1forge"
    return Path(root) / "dqm_faults"


def pool(n: int, pileup: float, seed: int):
    """Minimum-bias events at ``pileup``, generated once and cached as HDF5."""
    from l1forge.sim.dataset import read_events, write_events
    from l1forge.sim.generate import generate_events

    path = cache_dir() / f"minbias_n{n}_pu{pileup:g}_seed{seed}.h5"
    if path.is_file():
        return read_events(path)
    t0 = time.perf_counter()
    events = generate_events("minbias", n, seed, pileup, progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    write_events(tmp, events)
    tmp.replace(path)
    log.info("generated %d events at pile-up %g in %.0f s", n, pileup, time.perf_counter() - t0)
    return events


class Stream:
    """Bootstrap lumisections of an event pool, scored and triggered as online."""

    def __init__(self, emulator, thresholds: np.ndarray, rng: np.random.Generator):
        self.emulator = emulator
        self.thresholds = thresholds
        self.rng = rng
        self.next_event = 0

    def score(self, objects_hw: np.ndarray) -> np.ndarray:
        return self.emulator.run_float(objects_hw.reshape(len(objects_hw), -1))[:, 0]

    def batch(self, objects_hw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Physical objects, scores and seed bits of hardware events, as the daemon sees them."""
        from l1forge.sim.l1objects import to_physical

        s = self.score(objects_hw)
        n = len(objects_hw)
        events = self.next_event + np.arange(n)
        self.next_event += n
        bits = np.column_stack(
            [s > t for t in self.thresholds] + [events % ZERO_BIAS_PRESCALE == 0]
        )
        return to_physical(objects_hw), s, bits

    def draw(self, objects_hw: np.ndarray, n: int) -> np.ndarray:
        return objects_hw[self.rng.integers(0, len(objects_hw), n)]


def run_lumisections(monitor, stream: Stream, sources, n_ls: int, per_ls: int, batch: int):
    """Fill and end ``n_ls`` lumisections; ``sources(ls)`` gives that lumisection's hw events."""
    out = []
    for ls in range(n_ls):
        x_hw = sources(ls, per_ls)
        for i in range(0, per_ls, batch):
            phys, s, bits = stream.batch(x_hw[i : i + batch])
            monitor.fill(ls, phys, s, bits, latency_s=1e-3)
        t0 = time.perf_counter()
        out.append(monitor.end_lumisection(ls))
        END_LS_SECONDS.append(time.perf_counter() - t0)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n-pool", type=int, default=4000, help="clean events generated (cached)")
    p.add_argument("--n-pool-pileup", type=int, default=2500, help="high pile-up events")
    p.add_argument("--pileup", type=float, default=20.0)
    p.add_argument("--fault-pileup", type=float, default=40.0)
    p.add_argument("--events-per-ls", type=int, default=2000)
    p.add_argument("--clean-ls", type=int, default=180)
    p.add_argument("--inject-at", type=int, default=10, help="first faulty lumisection")
    p.add_argument("--max-fault-ls", type=int, default=8, help="faulty lumisections watched")
    p.add_argument("--batch", type=int, default=500, help="events per filled batch")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.getLogger("l1forge.online.dqm.monitor").setLevel(logging.CRITICAL)

    from l1forge.models.build import random_mlp
    from l1forge.models.emulator import Emulator
    from l1forge.online.dqm.config import load_config
    from l1forge.online.dqm.monitor import DQMMonitor
    from l1forge.sim import faults

    t_start = time.perf_counter()
    clean = pool(args.n_pool, args.pileup, args.seed)
    high = pool(args.n_pool_pileup, args.fault_pileup, args.seed + 1)
    emulator = Emulator(random_mlp(score=True, seed=0, name="ad"))
    rng = np.random.default_rng(args.seed)
    ref_scores = emulator.run_float(clean.inputs)[:, 0]
    thresholds = np.quantile(ref_scores, [1 - f for _, f in SEEDS])
    seed_names = (*[n for n, _ in SEEDS], "ZeroBias")
    config = load_config()

    def monitor() -> DQMMonitor:
        return DQMMonitor(config, seed_names=seed_names, score_names=("ad",), run=args.seed)

    # -- throughput of fill (the DQM runs on the sampled monitoring stream) -----------------
    stream = Stream(emulator, thresholds, rng)
    phys, s, bits = stream.batch(stream.draw(clean.objects_hw, 4096))
    m = monitor()
    best = math.inf
    for _ in range(20):
        t0 = time.perf_counter()
        m.fill(0, phys, s, bits, 1e-3)
        best = min(best, time.perf_counter() - t0)
    fill_rate = len(phys) / best

    # -- clean run: false alarms per histogram per lumisection ------------------------------
    m = monitor()
    t0 = time.perf_counter()
    lumis = run_lumisections(
        m,
        stream,
        lambda ls, n: stream.draw(clean.objects_hw, n),
        args.clean_ls,
        args.events_per_ls,
        args.batch,
    )
    clean_seconds = time.perf_counter() - t0
    trials = sum(m.histograms_compared(ls) for ls in range(args.clean_ls))
    err_pairs = {(a.lumisection, a.histogram) for al in lumis for a in al if a.severity == "error"}
    warn_pairs = {(a.lumisection, a.histogram) for al in lumis for a in al}
    false_errors = len(err_pairs)
    # one-sided 95% upper limit of a binomial rate with zero events is 3/n ("rule of three")
    rate = false_errors / trials if trials else math.nan
    upper95 = 3.0 / trials if trials and false_errors == 0 else None
    alarms_by_hist: dict[str, int] = {}
    for _, h in warn_pairs:
        alarms_by_hist[h] = alarms_by_hist.get(h, 0) + 1
    with_dir = cache_dir() / "clean_run"
    t1 = time.perf_counter()
    result_files = m.end_run(with_dir)
    write_seconds = time.perf_counter() - t1

    # -- faults -----------------------------------------------------------------------------
    injected = {
        "dead_region": faults.DeadRegion("jet", eta_min=1.5, eta_max=3.0, phi_min=0.0, phi_max=1.0),
        "hot_channel": faults.HotChannel("jet", eta=-1.2, phi=2.0, pt_gev=40.0, fraction=0.02),
        "energy_scale": faults.EnergyScale(shift=0.05),
        "pileup": faults.HigherPileup(pileup_mean=args.fault_pileup),
    }

    def run_fault(name: str, fault) -> dict:
        """Clean lumisections, then ``fault`` from ``inject_at`` on: when was it flagged?"""
        frng = np.random.default_rng(args.seed + 100)

        def source(ls: int, n: int) -> np.ndarray:
            if ls < args.inject_at:
                return stream.draw(clean.objects_hw, n)
            if isinstance(fault, faults.HigherPileup):
                return stream.draw(high.objects_hw, n)
            return faults.inject(fault, stream.draw(clean.objects_hw, n), frng)

        m = monitor()
        lumis = run_lumisections(
            m, stream, source, args.inject_at + args.max_fault_ls, args.events_per_ls, args.batch
        )
        kinds, hists = EXPECTED[name]
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        before = [a for al in lumis[: args.inject_at] for a in al if a.severity == "error"]
        flagged_ls = [
            ls
            for ls in range(args.inject_at, len(lumis))
            if any(
                a.severity == "error" and a.kind in kinds and a.histogram in hists
                for a in lumis[ls]
            )
        ]
        first = flagged_ls[0] if flagged_ls else None
        first_alarms = lumis[first] if first is not None else []
        params = {k: v for k, v in asdict(fault).items() if k != "response"}
        return {
            "fault": {"type": type(fault).__name__, **params},
            "expected_kind": list(kinds),
            "expected_histograms": list(hists),
            "flagged": first is not None,
            "lumisections_to_flag": None if first is None else first - args.inject_at + 1,
            "faulty_lumisections_flagged": len(flagged_ls),
            "flagged_lumisections": flagged_ls,
            "faulty_lumisections": args.max_fault_ls,
            "errors_before_injection": len(before),
            "alarms_at_first_flag": sorted(
                {f"{a.severity}:{a.kind}:{a.histogram}" for a in first_alarms}
            ),
        }

    details = {name: run_fault(name, fault) for name, fault in injected.items()}
    # smaller faults than the targets: where does detection within the watched window stop?
    sensitivity = {}
    for shift in (0.01, 0.02, 0.03):
        d = run_fault("energy_scale", faults.EnergyScale(shift=shift))
        sensitivity[f"energy_scale_{shift:g}"] = d["lumisections_to_flag"]
    for frac in (0.0025, 0.005, 0.01):
        d = run_fault("hot_channel", replace(injected["hot_channel"], fraction=frac))
        sensitivity[f"hot_channel_fraction_{frac:g}"] = d["lumisections_to_flag"]
    small_dead = faults.DeadRegion("jet", eta_min=-0.5, eta_max=0.0, phi_min=1.0, phi_max=1.35)
    sensitivity["dead_region_0.5x0.35"] = run_fault("dead_region", small_dead)[
        "lumisections_to_flag"
    ]
    flagged = [d for d in details.values() if d["flagged"]]
    result = {
        "faults_injected": len(details),
        "faults_flagged": len(flagged),
        "max_lumisections_to_flag": max((d["lumisections_to_flag"] for d in flagged), default=None),
        "false_alarm_rate": rate,
        "false_alarm_rate_upper95": upper95,
        "false_alarms": false_errors,
        "false_alarm_trials": trials,
        "warning_rate": len(warn_pairs) / trials if trials else math.nan,
        "clean_lumisections": args.clean_ls,
        "alarms_by_histogram_clean": dict(sorted(alarms_by_hist.items())),
        "events_per_lumisection": args.events_per_ls,
        "pool_events": {"pileup_clean": len(clean), "pileup_high": len(high)},
        "pileup": {"clean": args.pileup, "fault": args.fault_pileup},
        "inject_at_lumisection": args.inject_at,
        "faults": details,
        "sensitivity_lumisections_to_flag": sensitivity,
        "fill_events_per_s": round(fill_rate),
        "lumisection_seconds_clean": clean_seconds / args.clean_ls,
        "end_lumisection_seconds_median": float(np.median(END_LS_SECONDS)),
        "end_run_write_seconds": write_seconds,
        "dqm_file": str(result_files.root_path),
        "seconds": time.perf_counter() - t_start,
    }
    print(json.dumps(result))
    return 0 if len(flagged) == len(details) else 1


if __name__ == "__main__":
    sys.exit(main())
