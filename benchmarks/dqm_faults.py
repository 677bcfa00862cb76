"""DQM on injected faults: lumisections to flag each fault, false-alarm rate on independent samples.

The DQM reference is filled from one Pythia minimum-bias sample (pile-up 20); clean
lumisections are cut, without replacement, from other samples generated with other seeds (each
with its own pile-up library), so a false alarm is what a real run of independent events would
raise against that reference. The same clean lumisections are also compared against the
running reference of the shipped default configuration. Faults are injected into independent
clean events; the pile-up fault uses its own pile-up 40 sample. Events go through the online
path: hardware units -> ``to_physical`` -> ``DQMMonitor.fill``, scores from the reference
encoder (``l1forge.models.reference``, emulated; ``--random`` for a random-weight network of
the same shape), seed bits from score thresholds set on the reference sample.

Samples are generated once and cached under ``out/bench/dqm_faults`` (``--cache``): about
156,000 events, about 12 minutes on 2 free cores for the first run (plus the reference
encoder's own first build); with the cache a run takes about 2 minutes. Measured first: each
sample carries its own 400-event pile-up library (``sim.generate``), whose objects' eta values
the DQM sees as a fingerprint, so samples of different seeds disagree (most clean lumisections
raise errors in the e/gamma and jet eta histograms). Prints one JSON object;
exits 1 when a fault is not flagged or clean lumisections raise error alarms above the 1e-3
design rate.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
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
TARGET_FALSE_ALARM_RATE = 1e-3  # error alarms per histogram per lumisection (dqm_default.yaml)
# Generator seeds: none is the reference encoder's (2024 and 2025..2028 for its signals).
REFERENCE_SEED = 7001
CLEAN_SEED0 = 7101
PILEUP_SEED = 7201
END_LS_SECONDS: list[float] = []  # wall time of every end_lumisection (all comparisons)


@dataclass(frozen=True)
class Sample:
    """Hardware objects of one generated sample and how it was made."""

    objects_hw: np.ndarray  # int32 (N, 19, 3)
    seed: int
    pileup: float
    path: str

    def __len__(self) -> int:
        return len(self.objects_hw)


def sample(cache: Path, n: int, pileup: float, seed: int, n_workers: int) -> Sample:
    """Minimum-bias events at ``pileup`` with generator seed ``seed``, generated once (cached)."""
    from l1forge.sim.dataset import read_events, write_events
    from l1forge.sim.generate import generate_events

    path = cache / f"minbias_n{n}_pu{pileup:g}_seed{seed}.h5"
    if not path.is_file():
        t0 = time.perf_counter()
        events = generate_events("minbias", n, seed, pileup, n_workers, progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        write_events(tmp, events)
        tmp.replace(path)
        log.info(
            "generated %d events (pile-up %g, seed %d) in %.0f s",
            n,
            pileup,
            seed,
            time.perf_counter() - t0,
        )
    return Sample(read_events(path).objects_hw, seed, pileup, str(path))


def network(args: argparse.Namespace):
    """(QNet, network_source, description) for the options."""
    from l1forge.models import qnet
    from l1forge.models.build import random_mlp

    if args.random:
        net = random_mlp(57, (32, 16), 3, score=True, seed=0, name="ad")
        return net, "random", "random_mlp(57, (32, 16), 3, score=True, seed=0): random weights"
    from l1forge.models.reference import reference_encoder

    ref = reference_encoder()
    return qnet.load(ref.qnet_path), ref.network_source, ref.describe()


class Stream:
    """Scores and seed bits of hardware events, as the daemon's monitoring tap delivers them."""

    def __init__(self, emulator, thresholds: np.ndarray):
        self.emulator = emulator
        self.thresholds = thresholds
        self.next_event = 0

    def score(self, objects_hw: np.ndarray) -> np.ndarray:
        return self.emulator.run_float(objects_hw.reshape(len(objects_hw), -1))[:, 0]

    def batch(self, objects_hw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Physical objects, scores and seed bits of hardware events."""
        from l1forge.sim.l1objects import to_physical

        s = self.score(objects_hw)
        n = len(objects_hw)
        events = self.next_event + np.arange(n)
        self.next_event += n
        bits = np.column_stack(
            [s > t for t in self.thresholds] + [events % ZERO_BIAS_PRESCALE == 0]
        )
        return to_physical(objects_hw), s, bits


def run_lumisections(
    monitor, stream: Stream, source: Callable[[int], np.ndarray], n_ls: int, batch: int
):
    """Fill and end ``n_ls`` lumisections; ``source(ls)`` gives that lumisection's hw events."""
    out = []
    for ls in range(n_ls):
        x_hw = source(ls)
        for i in range(0, len(x_hw), batch):
            phys, s, bits = stream.batch(x_hw[i : i + batch])
            monitor.fill(ls, phys, s, bits, latency_s=1e-3)
        t0 = time.perf_counter()
        out.append(monitor.end_lumisection(ls))
        END_LS_SECONDS.append(time.perf_counter() - t0)
    return out


def false_alarms(monitor, lumis: list, n_ls: int) -> dict:
    """Error alarms per (lumisection, histogram) comparison, with the 95 % upper limit."""
    trials = sum(monitor.histograms_compared(ls) for ls in range(n_ls))
    err = {(a.lumisection, a.histogram) for al in lumis for a in al if a.severity == "error"}
    warn = {(a.lumisection, a.histogram) for al in lumis for a in al}
    by_hist: dict[str, int] = {}
    for _, h in warn:
        by_hist[h] = by_hist.get(h, 0) + 1
    by_hist_err: dict[str, int] = {}
    for _, h in err:
        by_hist_err[h] = by_hist_err.get(h, 0) + 1
    if trials and err:  # one-sided 95 % upper limit of a binomial rate (Clopper-Pearson)
        from scipy.stats import beta

        upper95 = float(beta.ppf(0.95, len(err) + 1, trials - len(err)))
    else:  # zero observed: the "rule of three"
        upper95 = 3.0 / trials if trials else None
    return {
        "false_alarms": len(err),
        "false_alarm_trials": trials,
        "false_alarm_rate": len(err) / trials if trials else math.nan,
        "false_alarm_rate_upper95": upper95,
        "warning_rate": len(warn) / trials if trials else math.nan,
        "lumisections_with_errors": len({ls for ls, _ in err}),
        "alarms_by_histogram_clean": dict(sorted(by_hist.items())),
        "errors_by_histogram_clean": dict(sorted(by_hist_err.items())),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default="out/bench/dqm_faults", help="generated samples (cached)")
    p.add_argument("--n-reference", type=int, default=20_000, help="events of the DQM reference")
    p.add_argument("--clean-samples", type=int, default=12, help="independent clean samples")
    p.add_argument("--n-clean", type=int, default=10_000, help="events per clean sample")
    p.add_argument("--n-pileup", type=int, default=16_000, help="events at the fault pile-up")
    p.add_argument("--pileup", type=float, default=20.0)
    p.add_argument("--fault-pileup", type=float, default=40.0)
    p.add_argument("--events-per-ls", type=int, default=2000)
    p.add_argument("--inject-at", type=int, default=10, help="first faulty lumisection")
    p.add_argument("--max-fault-ls", type=int, default=8, help="faulty lumisections watched")
    p.add_argument("--batch", type=int, default=500, help="events per filled batch")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--random", action="store_true", help="a random-weight network instead")
    p.add_argument("--seed", type=int, default=1, help="seed of the fault injection")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.getLogger("l1forge.online.dqm.monitor").setLevel(logging.CRITICAL)
    logging.getLogger("distributed").setLevel(logging.WARNING)

    from l1forge.models.emulator import Emulator
    from l1forge.online.dqm.config import load_config
    from l1forge.online.dqm.histograms import DQMReference, compared_values
    from l1forge.online.dqm.monitor import DQMMonitor
    from l1forge.sim import faults

    t_start = time.perf_counter()
    per_ls = args.events_per_ls
    cache = Path(args.cache)
    gen = lambda n, pu, seed: sample(cache, n, pu, seed, args.workers)  # noqa: E731
    reference = gen(args.n_reference, args.pileup, REFERENCE_SEED)
    clean = [gen(args.n_clean, args.pileup, CLEAN_SEED0 + i) for i in range(args.clean_samples)]
    high = gen(args.n_pileup, args.fault_pileup, PILEUP_SEED)
    t_samples = time.perf_counter() - t_start
    # clean lumisections: disjoint slices, never across two samples
    clean_ls = [
        s.objects_hw[i : i + per_ls] for s in clean for i in range(0, len(s) - per_ls + 1, per_ls)
    ]
    n_clean_ls = len(clean_ls)
    if n_clean_ls < args.inject_at + args.max_fault_ls:
        p.error(f"{n_clean_ls} clean lumisections: fewer than a fault run needs; generate more")

    net, network_source, network_desc = network(args)
    emulator = Emulator(net)
    ref_scores = emulator.run_float(reference.objects_hw.reshape(len(reference), -1))[:, 0]
    thresholds = np.quantile(ref_scores, [1 - f for _, f in SEEDS])
    seed_names = (*[n for n, _ in SEEDS], "ZeroBias")
    config = load_config()

    def monitor(ref: DQMReference | None = None) -> DQMMonitor:
        return DQMMonitor(config, seed_names=seed_names, score_names=("ad",), run=1, reference=ref)

    # -- the DQM reference: the reference sample as one long lumisection --------------------
    m = monitor()
    run_lumisections(m, Stream(emulator, thresholds), lambda ls: reference.objects_hw, 1, 4096)
    dqm_ref = DQMReference(
        {k: compared_values(h) for k, h in m.lumisection_histograms(0).items()},
        float(len(reference)),
    )

    # -- throughput of fill (the DQM runs on the sampled monitoring stream) -----------------
    stream = Stream(emulator, thresholds)
    phys, s, bits = stream.batch(np.concatenate(clean_ls[:3])[:4096])
    m = monitor()
    best = math.inf
    for _ in range(20):
        t0 = time.perf_counter()
        m.fill(0, phys, s, bits, 1e-3)
        best = min(best, time.perf_counter() - t0)
    fill_rate = len(phys) / best

    # -- clean lumisections against the reference sample, then the running reference --------
    m = monitor(dqm_ref)
    t0 = time.perf_counter()
    lumis = run_lumisections(
        m, Stream(emulator, thresholds), clean_ls.__getitem__, n_clean_ls, args.batch
    )
    clean_seconds = time.perf_counter() - t0
    vs_reference = false_alarms(m, lumis, n_clean_ls)
    t1 = time.perf_counter()
    result_files = m.end_run(cache / "clean_run")
    write_seconds = time.perf_counter() - t1
    m = monitor()
    lumis = run_lumisections(
        m, Stream(emulator, thresholds), clean_ls.__getitem__, n_clean_ls, args.batch
    )
    vs_running = false_alarms(m, lumis, n_clean_ls)

    # -- faults (running reference, as shipped) ---------------------------------------------
    injected = {
        "dead_region": faults.DeadRegion("jet", eta_min=1.5, eta_max=3.0, phi_min=0.0, phi_max=1.0),
        "hot_channel": faults.HotChannel("jet", eta=-1.2, phi=2.0, pt_gev=40.0, fraction=0.02),
        "energy_scale": faults.EnergyScale(shift=0.05),
        "pileup": faults.HigherPileup(pileup_mean=args.fault_pileup),
    }
    n_fault_runs = [0]

    def run_fault(name: str, fault) -> dict:
        """Clean lumisections, then ``fault`` from ``inject_at`` on: when was it flagged?"""
        frng = np.random.default_rng(args.seed + 100)
        offset = 7 * n_fault_runs[0]  # each fault run starts on other clean lumisections
        n_fault_runs[0] += 1

        def source(ls: int) -> np.ndarray:
            x = clean_ls[(offset + ls) % n_clean_ls]
            if ls < args.inject_at:
                return x
            if isinstance(fault, faults.HigherPileup):
                # disjoint slices; a sample shorter than the watched window is reused cyclically
                k = (ls - args.inject_at) * per_ls + np.arange(per_ls)
                return high.objects_hw[k % len(high)]
            return faults.inject(fault, x, frng)

        m = monitor()
        lumis = run_lumisections(m, stream, source, args.inject_at + args.max_fault_ls, args.batch)
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
        "network_source": network_source,
        "network": network_desc,
        "faults_injected": len(details),
        "faults_flagged": len(flagged),
        "max_lumisections_to_flag": max((d["lumisections_to_flag"] for d in flagged), default=None),
        "reference": "reference sample (file-mode reference), clean lumisections independent",
        **vs_reference,
        "false_alarm_target_rate": TARGET_FALSE_ALARM_RATE,
        "running_reference": vs_running,
        "clean_lumisections": n_clean_ls,
        "events_per_lumisection": per_ls,
        "samples": {
            "reference": {"events": len(reference), "seed": reference.seed, "pileup": args.pileup},
            "clean": {
                "samples": len(clean),
                "events_each": args.n_clean,
                "seeds": [s.seed for s in clean],
                "pileup": args.pileup,
                "resampled": False,
            },
            "fault_pileup": {"events": len(high), "seed": high.seed, "pileup": args.fault_pileup},
            "cache": str(cache),
        },
        "inject_at_lumisection": args.inject_at,
        "faults": details,
        "sensitivity_lumisections_to_flag": sensitivity,
        "fill_events_per_s": round(fill_rate),
        "lumisection_seconds_clean": clean_seconds / n_clean_ls,
        "end_lumisection_seconds_median": float(np.median(END_LS_SECONDS)),
        "end_run_write_seconds": write_seconds,
        "dqm_file": str(result_files.root_path),
        "samples_seconds": t_samples,
        "seconds": time.perf_counter() - t_start,
    }
    print(json.dumps(result))
    ok_alarms = (
        vs_reference["false_alarms"] <= TARGET_FALSE_ALARM_RATE * vs_reference["false_alarm_trials"]
    )
    return 0 if len(flagged) == len(details) and ok_alarms else 1


if __name__ == "__main__":
    sys.exit(main())
