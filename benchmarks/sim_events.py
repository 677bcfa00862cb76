"""Event-generation throughput: events/s per core against bare Pythia, 1 -> 2 worker scaling.

Prints one JSON object. All rates include Pythia, pile-up overlay and the Level-1 reduction;
the worker runs include starting the dask LocalCluster. The reference, measured in the same
run, is bare Pythia (minimum bias, ``next()`` only), alone and as two processes at once (the
machine's own 2-core scaling, which shows a shared machine's noise). The scaling job uses
20,000 events by default and takes minutes; the first run also makes the shared pile-up
library (50,000 events by default, a few minutes, then cached).

    python benchmarks/sim_events.py [scaling_events] [library_events]
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time

from l1forge.sim.generate import (
    DEFAULT_PILEUP,
    DEFAULT_SHARD_EVENTS,
    PILEUP_LIBRARY_EVENTS,
    _make_pythia,
    generate_events,
    local_cluster,
)
from l1forge.sim.processes import get_process

BARE_EVENTS = 1500
RATE_EVENTS = 2000


def bare_pythia(n: int) -> float:
    """Seconds for ``n`` minimum-bias ``next()`` calls (initialization excluded)."""
    pythia = _make_pythia(get_process("minbias").settings, 3)
    t0 = time.perf_counter()
    for _ in range(n):
        pythia.next()
    return time.perf_counter() - t0


def bare_pythia_two_processes(n: int) -> float:
    """Events/s of two bare-Pythia processes running at once (each ``n`` events)."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        seconds = pool.map(bare_pythia, [n, n])
    return 2 * n / max(seconds)


def rate(process: str, n: int, workers: int, library: int, shard_events: int) -> dict:
    """One generation job: its events, wall and (this process's) CPU seconds, events/s."""
    t0, c0 = time.perf_counter(), time.process_time()
    generate_events(
        process,
        n,
        7,
        DEFAULT_PILEUP,
        n_workers=workers,
        progress=False,
        shard_events=shard_events,
        pileup_library_events=library,
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "process": process,
        "events": n,
        "workers": workers,
        "shard_events": shard_events,
        "wall_s": round(wall, 2),
        "cpu_s_this_process": round(cpu, 2),
        "events_per_s": round(n / wall, 1),
    }


def cluster_startup(workers: int) -> float:
    """Seconds to start and close the LocalCluster ``generate_events`` starts (no tasks)."""
    from dask.distributed import Client

    t0 = time.perf_counter()
    with local_cluster(workers) as cluster, Client(cluster) as client:
        client.run(lambda: None)
    return time.perf_counter() - t0


def main() -> int:
    n_scaling = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    library = int(sys.argv[2]) if len(sys.argv) > 2 else PILEUP_LIBRARY_EVENTS
    shard = min(DEFAULT_SHARD_EVENTS, max(1, n_scaling // 4))
    print(f"pile-up library of {library} events (made once, then cached)", file=sys.stderr)
    generate_events("minbias", 10, 1, DEFAULT_PILEUP, progress=False, pileup_library_events=library)
    generate_events(
        "h0_tautau", 10, 1, DEFAULT_PILEUP, progress=False, pileup_library_events=library
    )
    print("measuring bare Pythia, background, signal", file=sys.stderr)
    bare = BARE_EVENTS / bare_pythia(BARE_EVENTS)
    bg = rate("minbias", RATE_EVENTS, 1, library, RATE_EVENTS)
    sig = rate("h0_tautau", RATE_EVENTS, 1, library, RATE_EVENTS)
    bare_after = BARE_EVENTS / bare_pythia(BARE_EVENTS)
    bare_two = bare_pythia_two_processes(BARE_EVENTS)
    print(f"measuring 1 vs 2 workers on {n_scaling} events", file=sys.stderr)
    one = rate("minbias", n_scaling, 1, library, shard)
    two = rate("minbias", n_scaling, 2, library, shard)
    startup = cluster_startup(2)
    bare_mean = (bare + bare_after) / 2
    r_bg, r_sig, r_one, r_two = (j["events_per_s"] for j in (bg, sig, one, two))
    print(
        json.dumps(
            {
                "network_source": None,  # no network runs here: Pythia and the L1 reduction
                "pileup_mean": DEFAULT_PILEUP,
                "pileup_library_events": library,
                "bare_pythia_events_per_s": round(bare_mean, 1),
                "bare_pythia_events_per_s_before_after": [round(bare, 1), round(bare_after, 1)],
                "jobs": {"bg_rate": bg, "signal_rate": sig, "one_worker": one, "two_workers": two},
                "bg_events_per_s": r_bg,
                "bg_over_bare_pythia": round(r_bg / bare_mean, 3),
                "signal_events_per_s": r_sig,
                "one_worker_events_per_s": r_one,
                "two_workers_events_per_s": r_two,
                "two_workers_events_per_s_per_core": round(r_two / 2, 1),
                "scaling_2_workers": round(r_two / r_one, 3),
                "local_cluster_startup_s": round(startup, 2),
                "bare_pythia_2_processes_events_per_s": round(bare_two, 1),
                "bare_pythia_scaling_2_processes": round(bare_two / bare_mean, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
