"""Events/s of `l1forge emulate run` end to end on 10^6 events (read HDF5, emulate, write ROOT).

The network is the reference encoder (``l1forge.models.reference``, cached under
``out/reference``). The 10^6-event file replicates the reference encoder's 20,000 Pythia
minimum-bias events 50 times (event numbers made unique, provenance says so), cached as
``out/bench/emulate_1M.h5``. The command runs as a subprocess (``python -m l1forge.cli``,
interpreter start and imports included), so its peak RSS is its own (``wait4``); the emulator
alone is timed in this process on the same events, and the written ROOT file is read back with
uproot and every score compared with the emulator's. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_EVENTS = 1_000_000


def _million_events(path: Path, source: Path, n: int) -> Path:
    """``n`` events replicating ``source`` (event numbers 1..n), written once and reused."""
    from l1forge.sim.dataset import EventSet, event_file_length, read_events, write_events

    if path.is_file() and event_file_length(path) == n:
        return path
    ev = read_events(source)
    reps = -(-n // len(ev))
    idx = np.tile(np.arange(len(ev)), reps)[:n]
    big = EventSet(
        objects_phys=ev.objects_phys[idx],
        objects_hw=ev.objects_hw[idx],
        run=ev.run[idx],
        event=np.arange(1, n + 1, dtype=np.uint64),
        label=ev.label[idx],
        weight=ev.weight[idx],
        processes=ev.processes,
        provenance={
            "replicated_from": str(source),
            "copies": reps,
            "note": f"{len(ev)} real Pythia events repeated to {n} rows; event renumbered",
            "source_provenance": ev.provenance,
        },
    )
    return write_events(path, big, chunk_events=65_536)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=N_EVENTS, help="events in the file")
    parser.add_argument("--chunk-events", type=int, default=65_536, help="events per chunk")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    import uproot

    from l1forge.models import qnet
    from l1forge.models.emulator import Emulator
    from l1forge.models.reference import reference_encoder
    from l1forge.sim.dataset import read_events

    ref = reference_encoder()
    name = "emulate_1M.h5" if args.events == N_EVENTS else f"emulate_{args.events}.h5"
    events = _million_events(Path("out/bench") / name, ref.background_path, args.events)
    with tempfile.TemporaryDirectory(dir="out/bench") as tmp:
        out = Path(tmp) / "scores.root"
        cmd = [sys.executable, "-m", "l1forge.cli", "emulate", "run", "--no-progress"]
        cmd += ["--model", f"ad={ref.qnet_path}", "--events", str(events), "--out", str(out)]
        cmd += ["--chunk-events", str(args.chunk_events)]
        print("running", " ".join(cmd), file=sys.stderr)
        t0 = time.perf_counter()
        with open(Path(tmp) / "stdout", "w+") as out_fh:
            proc = subprocess.Popen(cmd, stdout=out_fh, env=os.environ)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            out_fh.seek(0)
            stdout = out_fh.read()
        if proc.returncode != 0:
            raise SystemExit(f"emulate run failed with exit code {proc.returncode}")
        child_rss_mb = usage.ru_maxrss / 1024
        command = json.loads(stdout.strip().splitlines()[-1])
        out_mb = out.stat().st_size / 2**20

        ev = read_events(events)
        x = ev.inputs
        net = qnet.load(ref.qnet_path)
        emu = Emulator(net)
        emu.run_all(x[:65_536])  # warm-up (thread pool, caches)
        t0 = time.perf_counter()
        y = emu.run_all(x)[net.outputs[0]]
        emu_s = time.perf_counter() - t0
        emu.close()
        scores = net.output_specs[0].fixed.to_float(y[:, 0])
        with uproot.open(out) as f:
            back = f["Events"].arrays(["score_ad", "run", "event"], library="np")
        readback_ok = bool(
            len(back["score_ad"]) == len(ev)
            and np.array_equal(back["score_ad"], scores)
            and np.array_equal(back["run"], ev.run)
            and np.array_equal(back["event"], ev.event)
        )
    result = {
        "network": ref.describe(),
        "network_source": ref.network_source,
        "n_events": len(ev),
        "events_file": str(events),
        "events_file_note": (
            f"{ref.recipe.n_background} real Pythia minimum-bias events replicated to "
            f"{len(ev)} rows (event numbers renumbered)"
        ),
        "events_per_s": round(len(ev) / wall),
        "command_seconds": round(wall, 2),
        "command_reported_events_per_s": command["events_per_s"],
        "emulator_only_events_per_s": round(len(ev) / emu_s),
        "end_to_end_over_emulator_only": round(len(ev) / wall / (len(ev) / emu_s), 4),
        "peak_rss_mb": round(child_rss_mb, 1),
        "chunk_events": args.chunk_events,
        "root_file_mb": round(out_mb, 1),
        "root_readback_ok": readback_ok,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0 if readback_ok else 1


if __name__ == "__main__":
    sys.exit(main())
