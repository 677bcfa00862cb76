"""Event-generation throughput: background and signal events/s per core, 1 -> 2 worker scaling.

Prints one JSON object. All rates include Pythia, pile-up overlay, jet clustering and the
Level-1 reduction; the scaling run includes starting the dask LocalCluster.
"""

from __future__ import annotations

import json
import sys
import time

from l1forge.sim.generate import DEFAULT_PILEUP, generate_events


def rate(process: str, n: int, workers: int, shard_events: int) -> float:
    t0 = time.perf_counter()
    generate_events(
        process, n, 7, DEFAULT_PILEUP, n_workers=workers, progress=False, shard_events=shard_events
    )
    return n / (time.perf_counter() - t0)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1200
    generate_events("minbias", 10, 1, DEFAULT_PILEUP, progress=False)  # warm the init cache
    generate_events("h0_tautau", 10, 1, DEFAULT_PILEUP, progress=False)
    print("measuring background / signal", file=sys.stderr)
    bg = rate("minbias", n, 1, n)
    sig = rate("h0_tautau", n, 1, n)
    print("measuring 1 vs 2 workers", file=sys.stderr)
    one = rate("minbias", n, 1, n // 4)
    two = rate("minbias", n, 2, n // 4)
    print(
        json.dumps(
            {
                "pileup_mean": DEFAULT_PILEUP,
                "events_per_job": n,
                "bg_process": "minbias",
                "signal_process": "h0_tautau",
                "bg_events_per_s": round(bg, 1),
                "signal_events_per_s": round(sig, 1),
                "one_worker_events_per_s": round(one, 1),
                "two_workers_events_per_s": round(two, 1),
                "scaling_2_workers": round(two / one, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
