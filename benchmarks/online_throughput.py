"""Events/s of the whole online chain against the emulator alone, with 1 and 2 local workers.

Replay source (as fast as possible, real Pythia events looped) -> credit-based dispatcher ->
workers (emulator backend) -> menu -> collector -> ROOT storage. The network is the reference
encoder (``l1forge.models.reference``, replaying its own minimum-bias sample; first build a few
minutes) unless ``--random`` asks for a random-weight network of the same shape. Reports
throughput, added latency per batch (source send -> collector receive, p50/p99), peak RSS of
all processes, and the emulator alone on the same inputs in the same job.

Every run is verified without the collector: the ROOT files it wrote are read back with uproot
and compared with a separate emulator + menu pass over the events the replay sent (sequence
number ``seq`` carries event ``seq % N`` of the N-event file): exactly the events that pass
the menu must be stored, once each, with the same scores, seed bits, event numbers and
objects. A third run kills one of 2 workers with SIGKILL at full speed in mid-run (``chaos``).
CPU is measured per part (the worker processes, the daemon process, and within it the
dispatcher and collector threads by their own thread clocks): ``*_cpu_s_per_mevent``, and
from their sum ``hosts_for_40mhz`` = 40e6 / (cores / CPU seconds per event), the number of
hosts of this kind a 40 MHz stream needs when its parts share the cores (beside it,
``hosts_for_40mhz_measured_rate`` from the measured events/s, and ``one_broker_max_events_per_s``,
the stream one dispatcher thread can broker before the stream must be split).
The scale-out runs (``--scale-out``, default 1-4 workers) carry every batch over tcp on
loopback, as remote workers do, and are verified the same way; ``--plot`` shows their events/s
and CPU per part. A fourth run paces the source at ``--paced-fraction`` of the best unpaced
rate, so its latency is the chain's own rather than a queue's (``paced_p99_latency_ms``).
Prints one JSON object; exits 1 unless every run verifies with 0 lost, duplicated, mismatched.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from l1forge.measure import rss_mb

DATASET_EVENTS = 3000  # the replay sample of --random runs (cached)
DATASET_SEED = 11
BATCH_SIZE = 16384
EVENTS_PER_LUMISECTION = 1 << 22
CHAOS_KILL_AT = 0.4  # fraction of the run's events processed when a worker is killed
VERIFY_CHUNK = 1 << 20
PARTS = ("workers", "broker", "collector", "daemon")  # CPU is measured per part

log = logging.getLogger("online_throughput")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _random_dataset(cache: Path) -> Path:
    """A few thousand minimum-bias events (pile-up 20), generated once and cached."""
    from l1forge.sim.dataset import write_events
    from l1forge.sim.generate import generate_events

    path = cache / f"bench_minbias_{DATASET_EVENTS}_{DATASET_SEED}.h5"
    if not path.is_file():
        logging.info("generating %d Pythia events for the benchmark (cached)", DATASET_EVENTS)
        write_events(path, generate_events("minbias", DATASET_EVENTS, DATASET_SEED, progress=False))
    return path


def _network(args: argparse.Namespace, tmp: Path, cache: Path) -> tuple[Path, Path, str, str]:
    """(IR path, replay HDF5, network_source, description) for the options."""
    from l1forge.models import qnet
    from l1forge.models.build import random_mlp

    if args.random:
        net = random_mlp(57, (32, 16), 3, score=True, seed=0, name="bench_ad")
        ir = qnet.save(net, tmp / "ad.json")
        desc = "random_mlp(57, (32, 16), 3, score=True, seed=0): random weights"
        return ir, _random_dataset(cache), "random", desc
    from l1forge.models.reference import reference_encoder

    ref = reference_encoder()
    ir, h5 = ref.qnet_path.resolve(), ref.background_path.resolve()
    return ir, h5, ref.network_source, ref.describe()


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


# ---- independent verification ------------------------------------------------------------


def read_stored(run_dir: Path, run: int, score_branch: str) -> tuple[dict[str, np.ndarray], int]:
    """Every event in every ROOT file of ``run`` under ``run_dir`` (read with plain uproot),
    and the number of files."""
    import uproot

    keys = ["run", "seq", "event", "lumisection", "seed_bits", score_branch, "objects_hw"]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for path in sorted(run_dir.glob(f"run{run:06d}_ls*.root")):
        with uproot.open(path) as f:
            cols = f["Events"].arrays(keys, library="np")
        for k in keys:
            parts[k].append(np.asarray(cols[k]))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}, len(parts["seq"])


class Expected:
    """The independent pass: scores of every replayed event and the menu's decision per seq."""

    def __init__(self, ir: Path, h5: Path, menu):
        from l1forge.models import qnet
        from l1forge.models.emulator import Emulator
        from l1forge.online.datapath.backends import outputs_float
        from l1forge.sim.dataset import read_events

        ev = read_events(h5)
        net = qnet.load(ir)
        emu = Emulator(net)
        try:
            self.scores = outputs_float(net, emu.run(ev.inputs))[:, 0]
        finally:
            emu.close()
        self.event = ev.event
        self.objects_hw = ev.objects_hw
        self.menu = menu
        self.n = len(ev)

    def accepted(self, n_sent: int, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seq, seed_bits) of the accepted events among seq 0..n_sent-1, and per-seed counts."""
        from l1forge.online.datapath.menu import seed_counts

        seqs, bits = [], []
        counts = np.zeros(len(self.menu.seeds), np.int64)
        for s in range(0, n_sent, VERIFY_CHUNK):
            q = np.arange(s, min(n_sent, s + VERIFY_CHUNK), dtype=np.uint64)
            b = self.menu.decide({model: self.scores[q % np.uint64(self.n)]}, q)
            counts += seed_counts(b, len(self.menu.seeds))
            keep = b != 0
            seqs.append(q[keep])
            bits.append(b[keep])
        return np.concatenate(seqs), np.concatenate(bits), counts


def verify(run_dir: Path, run: int, n_sent: int, expected: Expected, model: str) -> dict:
    """Lost, duplicated and mismatched events of one run, from its files alone."""
    from l1forge.online.datapath.storage import verify_run_files

    exp_seq, exp_bits, exp_counts = expected.accepted(n_sent, model)
    got, n_files = read_stored(run_dir, run, f"score_{model}")
    seq = got["seq"].astype(np.uint64)
    wrong_run = int((got["run"] != run).sum())
    uniq, first = np.unique(seq, return_index=True)
    duplicated = len(seq) - len(uniq)
    lost = np.setdiff1d(exp_seq, uniq, assume_unique=True)
    unexpected = np.setdiff1d(uniq, exp_seq, assume_unique=True)
    both, i_got, i_exp = np.intersect1d(uniq, exp_seq, assume_unique=True, return_indices=True)
    rows = first[i_got]
    src = (both % np.uint64(expected.n)).astype(np.int64)
    bad = (
        (got["seed_bits"][rows].astype(np.uint32) != exp_bits[i_exp])
        | (got[f"score_{model}"][rows] != expected.scores[src])
        | (got["event"][rows].astype(np.uint64) != expected.event[src])
        | (got["lumisection"][rows].astype(np.uint64) != both // np.uint64(EVENTS_PER_LUMISECTION))
        | (got["objects_hw"][rows] != expected.objects_hw[src]).reshape(len(rows), -1).any(axis=1)
    )
    files = verify_run_files(run_dir, run)
    return {
        "verified_lost": len(lost),
        "verified_duplicated": duplicated,
        "verified_mismatched": int(bad.sum()) + len(unexpected) + wrong_run,
        "verified_unexpected": len(unexpected),
        "verified_expected_accepted": len(exp_seq),
        "verified_stored": len(seq),
        "verified_files_read": n_files,
        "verified_first_lost_seqs": lost[:5].tolist(),
        "expected_seed_counts": dict(zip(expected.menu.names, exp_counts.tolist(), strict=True)),
        "manifest_check_ok": files.ok,
    }


# ---- one run -----------------------------------------------------------------------------


def _run(
    tmp: Path,
    h5: Path,
    ir: Path,
    menu,
    expected: Expected,
    n_workers: int,
    n_events: int,
    run: int,
    chaos: bool = False,
    transport: str = "ipc",
    rate_hz: float | None = None,
) -> dict:
    from l1forge.online.config import run_config_from_dict
    from l1forge.online.datapath.pipeline import Pipeline

    cfg = run_config_from_dict(
        {
            "source": {
                "kind": "replay",
                "path": str(h5),
                "loop": True,
                "n_events": n_events,
                "rate_hz": rate_hz,
            },
            "backend": {"kind": "emulator", "models": {"ad": str(ir)}},
            "workers": {"n": n_workers, "credits": 4, "transport": transport},
            "storage": {"out_dir": str(tmp), "events_per_lumisection": EVENTS_PER_LUMISECTION},
            "monitor": {"fraction": 0.05},
            "batch_size": BATCH_SIZE,
            "state_dir": str(tmp / "state"),
        },
        tmp,
    )
    run_dir = tmp / f"run{run}"
    pipe = Pipeline(cfg, run, run_dir, menu=menu)
    pipe.start()
    t0 = time.perf_counter()
    me = os.getpid()
    cpu0 = {me: _cpu_s(me)} | {
        w["pid"]: _cpu_s(w["pid"]) for w in pipe.status()["workers"].values()
    }
    cpu1 = dict(cpu0)  # last CPU seconds seen per process (a killed worker keeps its last value)
    peak = 0.0
    killed: dict | None = None
    while not pipe.dispatcher.drained.wait(0.05 if chaos and killed is None else 0.2):
        pids = {me} | {w["pid"] for w in pipe.status()["workers"].values()}  # restarts too
        peak = max(peak, sum(rss_mb(p) for p in pids))
        for p in pids:
            cpu1[p] = max(cpu1.get(p, 0.0), _cpu_s(p))
        if chaos and killed is None:
            st = pipe.status()
            if st.get("events_processed", 0) >= CHAOS_KILL_AT * n_events:
                name, w = sorted(st["workers"].items())[0]
                os.kill(w["pid"], signal.SIGKILL)  # a worker process this run started
                killed = {
                    "worker": name,
                    "pid": w["pid"],
                    "at_events_processed": st["events_processed"],
                    "at_events_in": st["events_in"],
                    "at_seconds": time.perf_counter() - t0,
                }
                log.warning("chaos: killed worker %s (pid %d)", name, w["pid"])
    seconds = time.perf_counter() - t0
    summary = pipe.stop()
    lost_collector = summary.lost + summary.n_failed_events  # failed batches count as lost
    out = {
        "workers": n_workers,
        "transport": transport,
        "rate_hz": rate_hz,
        "events": summary.n_processed,
        "seconds": seconds,
        "events_per_s": summary.n_processed / seconds,
        "p50_latency_ms": summary.latency_ms.get("p50"),
        "p99_latency_ms": summary.latency_ms.get("p99"),
        "peak_rss_mb": peak,
        "lost": lost_collector,
        "duplicated": summary.duplicated,
        "collector_lost": summary.lost,
        "failed_batch_events": summary.n_failed_events,
        "failed_batches": summary.failed_batches,
        "duplicates_suppressed": summary.duplicates_suppressed,
        "redelivered_batches": summary.redelivered_batches,
        "dead_workers": summary.dead_workers,
        "n_events_in": summary.n_events_in,
        "accepted": summary.n_accepted,
        "files": len(summary.files),
        "source_blocked_s": summary.source_blocked_s,
        "cpu_s_daemon": cpu1[me] - cpu0[me],
        "cpu_s_workers": sum(v - cpu0.get(p, 0.0) for p, v in cpu1.items() if p != me),
        "cpu_s_broker": pipe.dispatcher.cpu_s,  # the dispatcher thread alone
        "cpu_s_collector": pipe.collector.cpu_s,  # the collector thread (menu counts, ROOT)
        "error": summary.error,
    }
    # the replay sent seq 0 .. n_events-1 unless the source stopped early (then those are lost)
    t1 = time.perf_counter()
    v = verify(run_dir, run, n_events, expected, "ad")
    v["verify_seconds"] = time.perf_counter() - t1
    v["collector_seed_counts_match"] = summary.per_seed == v["expected_seed_counts"]
    out.update(v)
    if chaos:
        out["killed"] = killed
    return out


def _ok(r: dict) -> bool:
    return (
        all(
            r[k] == 0
            for k in ("verified_lost", "verified_duplicated", "verified_mismatched", "lost")
        )
        and r["manifest_check_ok"]
    )


def _scale_row(r: dict) -> dict:
    """A scale-out run in brief: events/s and CPU seconds per million events by part."""
    mev = r["events"] / 1e6
    return {
        "workers": r["workers"],
        "transport": r["transport"],
        "events_per_s": r["events_per_s"],
        "p99_latency_ms": r["p99_latency_ms"],
        **{f"{p}_cpu_s_per_mevent": r[f"cpu_s_{p}"] / mev for p in PARTS},
        "verified_ok": _ok(r),
    }


def _scale_plot(rows: list[dict], emu_alone: float, network: str, path: Path) -> str:
    """Events/s against workers, and where the CPU goes per million events, as a PNG (``rows``
    from `_scale_row`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["workers"] for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot(n, [r["events_per_s"] / 1e6 for r in rows], "o-", label="whole chain (tcp loopback)")
    ax.axhline(emu_alone / 1e6, ls="--", c="gray", label="emulator alone, 2 threads")
    ax.set_xlabel("local workers")
    ax.set_ylabel("M events/s")
    ax.set_xticks(n)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title(f"{os.cpu_count()} cores", fontsize=9)
    per = {p: np.array([r[f"{p}_cpu_s_per_mevent"] for r in rows]) for p in PARTS}
    bottom = np.zeros(len(rows))
    for part in ("workers", "broker", "collector"):
        bx.bar(n, per[part], bottom=bottom, label=part)
        bottom += per[part]
    other = per["daemon"] - per["broker"] - per["collector"]  # the threads are the daemon's
    bx.bar(n, other, bottom=bottom, label="daemon, rest (source, tap)")
    bx.set_xlabel("local workers")
    bx.set_ylabel("CPU s per million events")
    bx.set_xticks(n)
    bx.legend(fontsize=8)
    fig.suptitle(network[:110], fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000, help="events per run")
    ap.add_argument("--random", action="store_true", help="a random-weight network instead")
    ap.add_argument("--no-chaos", action="store_true", help="skip the worker-kill run")
    ap.add_argument("--cache", default=os.environ.get("L1FORGE_CACHE", "~/.cache/l1forge"))
    ap.add_argument(
        "--scale-out",
        default="1,2,3,4",
        help="worker counts of the scale-out runs over tcp on loopback ('' for none)",
    )
    ap.add_argument("--plot", default="out/online_throughput/scale_out.png")
    ap.add_argument(
        "--paced-fraction",
        type=float,
        default=0.7,
        help="a run of 2 workers whose source is paced at this fraction of the best unpaced "
        "events/s: the added latency of a stream the chain keeps up with (0: none)",
    )
    args = ap.parse_args(argv)
    scale_out = [int(n) for n in args.scale_out.split(",") if n.strip()]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from l1forge.online.datapath.menu import default_menu, zero_bias_scores
    from l1forge.sim.dataset import read_events

    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="l1f-bench-") as d:
        tmp = Path(d)
        ir, h5, network_source, network_desc = _network(args, tmp, cache)
        logging.getLogger("l1forge.online.datapath.menu").setLevel(
            logging.ERROR
        )  # few calibration events
        menu = default_menu("ad", None).calibrate(zero_bias_scores({"ad": str(ir)}, str(h5)))
        expected = Expected(ir, h5, menu)
        x = read_events(h5).inputs
        x = np.resize(x, (2_000_000, x.shape[1]))  # the same events, looped
        emu2 = _emulator_alone(ir, x, threads=2)
        emu1 = _emulator_alone(ir, x, threads=1)
        del x  # the pipeline's memory is measured without the reference inputs
        runs = [_run(tmp, h5, ir, menu, expected, n, args.events, run=n) for n in (1, 2)]
        chaos = None
        if not args.no_chaos:
            chaos = _run(tmp, h5, ir, menu, expected, 2, args.events, run=3, chaos=True)
        scaled = [
            _run(tmp, h5, ir, menu, expected, n, args.events, run=10 + n, transport="tcp")
            for n in scale_out
        ]
        paced = None
        if args.paced_fraction > 0:
            rate = args.paced_fraction * max(r["events_per_s"] for r in runs)
            paced = _run(tmp, h5, ir, menu, expected, 2, args.events, run=4, rate_hz=rate)
        n_dataset = expected.n
    best = max(runs, key=lambda r: r["events_per_s"])
    scale_rows = [_scale_row(r) for r in scaled]
    per_mevent = {  # CPU seconds per million events of the best run, by part
        part: best[f"cpu_s_{part}"] / (best["events"] / 1e6) for part in PARTS
    }
    # A host of this kind (os.cpu_count() cores) processes cores / (CPU s per event) events/s
    # when the parts share its cores; a 40 MHz stream then needs 40e6 / that many hosts. The
    # daemon's CPU includes the broker and the collector threads (and the source).
    cpu_per_event = (per_mevent["workers"] + per_mevent["daemon"]) / 1e6
    host_rate = (os.cpu_count() or 1) / cpu_per_event
    keys = ("verified_lost", "verified_duplicated", "verified_mismatched", "lost", "duplicated")
    result = {
        "chain": "replay -> dispatcher -> workers (emulator) -> menu -> collector -> ROOT",
        "network_source": network_source,
        "network": network_desc,
        "dataset": str(h5),
        "dataset_events": n_dataset,
        "batch_size": BATCH_SIZE,
        "events_per_s": best["events_per_s"],
        "workers_best": best["workers"],
        "p50_latency_ms": best["p50_latency_ms"],
        "p99_latency_ms": best["p99_latency_ms"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        **{k: sum(r[k] for r in runs) for k in keys},
        "one_worker": runs[0],
        "two_workers": runs[1],
        "chaos": chaos,
        "paced": paced,
        "paced_p99_latency_ms": paced["p99_latency_ms"] if paced else None,
        "emulator_alone_events_per_s": emu2,
        "emulator_alone_1thread_events_per_s": emu1,
        "ratio_to_emulator_alone": best["events_per_s"] / emu2,
        "broker_cpu_s_per_mevent": per_mevent["broker"],
        "collector_cpu_s_per_mevent": per_mevent["collector"],
        "workers_cpu_s_per_mevent": per_mevent["workers"],
        "daemon_cpu_s_per_mevent": per_mevent["daemon"],
        "host_events_per_s_cpu_bound": host_rate,
        "hosts_for_40mhz": math.ceil(40e6 / host_rate),
        "hosts_for_40mhz_measured_rate": math.ceil(40e6 / best["events_per_s"]),
        "one_broker_max_events_per_s": 1e6 / per_mevent["broker"] if per_mevent["broker"] else None,
        "scale_out": scale_rows,
        "scale_out_plot": _scale_plot(scale_rows, emu2, network_desc, Path(args.plot))
        if scale_rows
        else None,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "seconds": time.perf_counter() - t_start,
    }
    print(json.dumps(result))
    ok = all(_ok(r) for r in [*runs, *scaled, *([paced] if paced else [])])
    ok = ok and (chaos is None or _ok(chaos))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
