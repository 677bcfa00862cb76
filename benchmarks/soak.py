"""Soak: the daemon for a stated time at full rate, with faults, verified from its files.

`l1forge online run --idle` in a subprocess replays a real minimum-bias sample through the
reference encoder (``l1forge.models.reference``; ``--random`` for a random network of the same
shape) as fast as its two emulator workers take it, in runs of ``--run-minutes``. Meanwhile,
on wall-clock timers over the whole soak:

- a random worker is killed with SIGKILL (``--kill-every-s``);
- one is frozen with SIGSTOP for longer than the heartbeat timeout, then woken
  (``--freeze-every-s``);
- the network and its menu are swapped together (``swap``) between two pairs: A, the encoder
  and a menu calibrated on it, and B, the same encoder with other input offsets (the kind of
  change the continual learner makes at run time) and a menu calibrated on B
  (``--swap-every-s``);
- once, the disk is filled (a small tmpfs when mounting is permitted, else a quota-like guard:
  ``storage.min_free_mb`` set 2 GB below the free space and a file that takes that much) and
  freed after ``--fill-hold-s``; the daemon holds the run meanwhile (``storage.full_wait_s``).

After each run its ROOT files are read back with uproot, independent of the collector, and
deleted: every (run, seq) sent must be stored exactly once if the pair in force accepted it,
with the score and seed bits of an emulator pass of that pair over the source event, and the
event number, objects and lumisection of the source (seq carries replay event seq % N). A seq
accepted by only one pair, inside a swap's switch-over gap (no stored event between the two
pairs' last and first), cannot be attributed: counted as ``verified_unattributed``. A separate
subscriber on the monitoring tap counts tap messages against what the collector published.
The daemon's RSS is sampled every 2 s; ``rss_growth_mb`` is the mean of the last fifth of the
soak minus the mean of the second fifth (after warm-up), bounded by ``--rss-bound-mb``.

Prints one JSON object; exits 1 unless lost = duplicated = mismatched = 0, every manifest
verifies and RSS stays in its bound. ``--minutes 60`` (default) takes about 70 minutes with the
verification; ``--short`` (about 3 minutes) is what ``make test`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from l1forge.measure import rss_mb

log = logging.getLogger("soak")

BATCH_SIZE = 16384
MODEL = "ad"
SEEDS = (  # a tighter menu than the demo's, so an hour of files stays small
    {"name": "AD_Loose", "model": MODEL, "target_rate_hz": 4.0e5},
    {"name": "AD_Nominal", "model": MODEL, "target_rate_hz": 2.0e5},
    {"name": "AD_Tight", "model": MODEL, "target_rate_hz": 1.0e5},
    {"name": "ZeroBias", "model": "", "prescale": 1000},
)
HEARTBEAT_S, TIMEOUT_S = 0.5, 3.0
FREEZE_S = TIMEOUT_S + 3.0  # longer than the heartbeat timeout: the worker is declared dead
GUARD_RESERVE_MB = 2048.0  # quota-like guard: min_free_mb this far below the free space
FILL_BELOW_GUARD_MB = 32.0  # the filler leaves this much less than min_free_mb
VERIFY_CHUNK = 1 << 22
RSS_SAMPLE_S = 2.0


@dataclass
class Settings:
    minutes: float = 60.0
    run_minutes: float = 5.0
    kill_every_s: float = 240.0
    freeze_every_s: float = 600.0
    swap_every_s: float = 180.0
    fill_at: float = 0.45  # fraction of the soak
    fill_hold_s: float = 30.0
    events_per_lumisection: int = 1 << 22
    rss_bound_mb: float = 64.0
    dqm: bool = True  # the daemon's DQM service on the tap
    tmpfs_size: str = "4g"  # one run's files (about 1 GB at 1M events/s; deleted once verified)

    @classmethod
    def short(cls) -> Settings:
        return cls(
            minutes=1.5,
            run_minutes=0.5,
            kill_every_s=20.0,
            freeze_every_s=33.0,
            swap_every_s=11.0,
            fill_at=0.55,
            fill_hold_s=6.0,
            events_per_lumisection=1 << 20,
            rss_bound_mb=256.0,  # 90 s is warm-up: the bound is loose, the hour's is not
            tmpfs_size="256m",
        )


# ---- the two (network, menu) pairs and what they accept ------------------------------------


class Pair:
    """A network and its menu, with the emulator's score of every replay event under it."""

    def __init__(self, label: str, net, ir: Path, h5: Path):
        from l1forge.models.emulator import Emulator
        from l1forge.online.datapath.backends import outputs_float
        from l1forge.online.datapath.menu import Menu, Seed
        from l1forge.sim.dataset import read_events

        self.label, self.ir = label, ir
        ev = read_events(h5)
        emu = Emulator(net)
        try:
            self.scores = outputs_float(net, emu.run(ev.inputs))[:, 0]
        finally:
            emu.close()
        self.event, self.objects_hw, self.n = ev.event, ev.objects_hw, len(ev)
        blank = Menu(tuple(Seed(**s) for s in SEEDS))
        self.menu = blank.calibrate({MODEL: self.scores})
        self.menu_json = self.menu.to_json()

    def decide(self, seqs: np.ndarray) -> np.ndarray:
        src = (seqs % np.uint64(self.n)).astype(np.int64)
        return self.menu.decide({MODEL: self.scores[src]}, seqs)

    def accepted(self, n_sent: int) -> np.ndarray:
        """The seqs among 0..n_sent-1 this pair accepts."""
        out = []
        for s in range(0, n_sent, VERIFY_CHUNK):
            q = np.arange(s, min(n_sent, s + VERIFY_CHUNK), dtype=np.uint64)
            out.append(q[self.decide(q) != 0])
        return np.concatenate(out) if out else np.zeros(0, np.uint64)


def make_pairs(
    random_net: bool, network: Path | None, events: Path | None, tmp: Path
) -> tuple[tuple[Pair, Pair], Path, str, str]:
    """(pairs A and B, replay HDF5, network_source, description). A network with an input
    scale op (the reference encoder, or ``--network``) gets a B whose input offsets move one
    LSB towards zero (0 goes to -1), which any signed offset register holds; a random network's
    B is another random network of the same shape."""
    from l1forge.firmware.registers import split_scaling, with_scaling
    from l1forge.models import qnet
    from l1forge.models.build import random_mlp
    from l1forge.models.reference import reference_encoder

    ref = reference_encoder() if events is None or (network is None and not random_net) else None
    h5 = events.resolve() if events is not None else ref.background_path.resolve()
    if random_net:
        nets = [random_mlp(57, (32, 16), 3, score=True, seed=k, name="soak_ad") for k in (0, 1)]
        source, desc = "random", "random_mlp(57, (32, 16), 3, score=True, seeds 0 and 1)"
    else:
        path = network if network is not None else ref.qnet_path
        a = qnet.load(path)
        scaling, _ = split_scaling(a)
        if scaling is None:
            raise SystemExit(f"{path}: the network has no input scale op to change for pair B")
        off = np.asarray(scaling.scale.arrays["offset"], dtype=np.int64)
        moved = np.where(off > 0, off - 1, np.where(off < 0, off + 1, -1))
        nets = [a, with_scaling(a, moved, scaling.scale.arrays["shift"])]
        if network is None:
            source, desc = ref.network_source, ref.describe()
        else:
            source, desc = "given", f"{network} (--network)"
        desc += "; B: its input offsets one LSB towards zero"
    pairs = tuple(
        Pair(label, net, qnet.save(net, tmp / f"ad_{label}.json"), h5)
        for label, net in zip("AB", nets, strict=True)
    )
    return (pairs[0], pairs[1]), h5, source, desc


# ---- verification of one run, from its files ------------------------------------------------


def read_run(run_dir: Path, run: int) -> dict[str, np.ndarray]:
    import uproot

    keys = ["run", "seq", "event", "lumisection", "seed_bits", f"score_{MODEL}", "objects_hw"]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for path in sorted(run_dir.glob(f"run{run:06d}_ls*.root")):
        with uproot.open(path) as f:
            cols = f["Events"].arrays(keys, library="np")
        for k in keys:
            parts[k].append(np.asarray(cols[k]))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def verify_run(run_dir: Path, run: int, n_sent: int, pairs: tuple[Pair, Pair], per_ls: int) -> dict:
    """Lost, duplicated, mismatched and unattributed events of one run, from its files."""
    from l1forge.online.datapath.storage import verify_run_files

    a, b = pairs
    got = read_run(run_dir, run)
    seq = got["seq"].astype(np.uint64)
    uniq, first = np.unique(seq, return_index=True)
    duplicated = len(seq) - len(uniq)
    rows = first
    src = (uniq % np.uint64(a.n)).astype(np.int64)
    score = got[f"score_{MODEL}"][rows]
    bits = got["seed_bits"][rows].astype(np.uint32)
    match = []
    for p in pairs:
        pbits = p.decide(uniq)
        match.append((score == p.scores[src]) & (bits == pbits) & (pbits != 0))
    ma, mb = match
    source_ok = (
        (got["event"][rows].astype(np.uint64) == a.event[src])
        & (got["lumisection"][rows].astype(np.uint64) == uniq // np.uint64(per_ls))
        & (got["run"][rows] == run)
        & (got["objects_hw"][rows] == a.objects_hw[src]).reshape(len(rows), -1).all(axis=1)
        & (uniq < np.uint64(n_sent))
    )
    mismatched = int((~((ma | mb) & source_ok)).sum())
    # the pair in force around each seq: from the stored events that only one pair explains
    only = ma ^ mb
    lab_seq, lab = uniq[only], np.where(ma[only], 0, 1)
    acc_a, acc_b = a.accepted(n_sent), b.accepted(n_sent)
    both = np.intersect1d(acc_a, acc_b, assume_unique=True)
    lost = len(np.setdiff1d(both, uniq, assume_unique=True))
    unattributed = 0
    for mine, other, label in ((acc_a, acc_b, 0), (acc_b, acc_a, 1)):
        solo = np.setdiff1d(np.setdiff1d(mine, other, assume_unique=True), uniq, True)
        if not len(solo):
            continue
        if not len(lab_seq):  # no stored event tells the pairs apart: nothing attributable
            unattributed += len(solo)
            continue
        i = np.searchsorted(lab_seq, solo)
        before = lab[np.clip(i - 1, 0, len(lab) - 1)]
        after = lab[np.clip(i, 0, len(lab) - 1)]
        before = np.where(i == 0, after, before)  # before the first label: the first one
        after = np.where(i == len(lab), before, after)
        sure = before == after
        lost += int((sure & (before == label)).sum())
        unattributed += int((~sure).sum())
    files = verify_run_files(run_dir, run)
    return {
        "run": run,
        "sent": n_sent,
        "stored": len(seq),
        "lost": lost,
        "duplicated": duplicated,
        "mismatched": mismatched,
        "unattributed": unattributed,
        "stored_by_pair": {"A": int(ma.sum()), "B": int(mb.sum()), "both": int((ma & mb).sum())},
        "manifest_ok": files.ok,
    }


# ---- the daemon and the faults --------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def storage_area(base: Path, allow_tmpfs: bool, size: str) -> Iterator[tuple[Path, str]]:
    """(folder for the runs' files, "tmpfs" | "guard")."""
    path = base / "store"
    path.mkdir()
    mounted = False
    if allow_tmpfs and os.geteuid() == 0:
        try:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                check=True,
                timeout=30,
                capture_output=True,
            )
            mounted = True
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            log.warning("no tmpfs (%s): the disk fill uses a quota-like guard", exc)
    try:
        yield path, "tmpfs" if mounted else "guard"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


class TapCounter(threading.Thread):
    """Counts the monitoring tap's messages per run, outside the daemon."""

    def __init__(self, endpoint: str):
        super().__init__(daemon=True)
        import zmq

        from l1forge.online.datapath.wire import TOPIC_MONITOR

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, TOPIC_MONITOR)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(endpoint)
        self.received: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        from l1forge.online.datapath.wire import decode_results

        while not self.stop.is_set():
            if not self.sock.poll(100):
                continue
            frames = self.sock.recv_multipart()
            r = decode_results(frames[1:])
            self.received[r.run] = self.received.get(r.run, 0) + 1

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.sock.close(0)
        self.ctx.term()


@dataclass
class Faults:
    """What the soak did, with when (seconds since the start)."""

    kills: list[dict] = field(default_factory=list)
    freezes: list[dict] = field(default_factory=list)
    swaps: list[dict] = field(default_factory=list)
    fills: list[dict] = field(default_factory=list)


class Soak:
    def __init__(self, s: Settings, tmp: Path, store: Path, mode: str, pairs: tuple[Pair, Pair]):
        self.s, self.tmp, self.store, self.mode, self.pairs = s, tmp, store, mode, pairs
        self.state_dir = tmp / "state"
        self.monitor_port = _free_port()
        self.faults = Faults()
        self.current = 0  # index of the pair in force
        self.rng = random.Random(7)
        self.rss: list[tuple[float, float]] = []
        self.runs: list[dict] = []
        self.t0 = time.monotonic()
        self.frozen: int | None = None
        self.min_free_mb = 64.0
        if mode == "guard":
            free = shutil.disk_usage(store).free / 2**20
            self.min_free_mb = max(64.0, free - GUARD_RESERVE_MB)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def config(self, h5: Path) -> dict:
        pair = self.pairs[self.current]
        return {
            "source": {"kind": "replay", "path": str(h5), "loop": True, "n_events": 1 << 50},
            "backend": {"kind": "emulator", "models": {MODEL: str(pair.ir)}},
            "workers": {"n": 2, "credits": 4, "heartbeat_s": HEARTBEAT_S, "timeout_s": TIMEOUT_S},
            "menu": {"seeds": pair.menu_json["seeds"]},
            "storage": {
                "out_dir": str(self.store),
                "events_per_lumisection": self.s.events_per_lumisection,
                "min_free_mb": self.min_free_mb,
                "full_wait_s": 600.0,
            },
            "network": {"monitor_port": self.monitor_port},
            "monitor": {"fraction": 0.05, "dqm_enabled": self.s.dqm},
            "batch_size": BATCH_SIZE,
            "state_dir": str(self.state_dir),
        }

    # -- faults --

    def _workers(self, client) -> dict[str, dict]:
        return client.status()["pipeline"].get("workers", {})

    def kill(self, client) -> None:
        ws = {n: w for n, w in self._workers(client).items() if w.get("pid") != self.frozen}
        if not ws:
            return
        name = self.rng.choice(sorted(ws))
        pid = int(ws[name]["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            self.faults.kills.append({"t_s": round(self.now(), 1), "worker": name, "pid": pid})
            log.warning("soak: SIGKILL worker %s (pid %d)", name, pid)

    def freeze(self, client) -> None:
        ws = self._workers(client)
        if not ws or self.frozen is not None:
            return
        name = self.rng.choice(sorted(ws))
        pid = int(ws[name]["pid"])
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return
        self.frozen = pid
        t = self.now()
        log.warning("soak: SIGSTOP worker %s (pid %d) for %.0f s", name, pid, FREEZE_S)
        time.sleep(FREEZE_S)
        declared = name in client.status()["pipeline"].get("dead_workers", [])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.frozen = None
        self.faults.freezes.append(
            {"t_s": round(t, 1), "worker": name, "pid": pid, "declared_dead": declared}
        )

    def swap(self, client) -> None:
        nxt = 1 - self.current
        pair = self.pairs[nxt]
        ack = client.swap(MODEL, pair.ir, pair.menu_json)
        self.current = nxt
        self.faults.swaps.append({"t_s": round(self.now(), 1), "to": pair.label, "ack": ack})

    def fill(self, client) -> None:
        """Fill the storage until the daemon's guard trips, hold, free; record what it saw."""
        free = shutil.disk_usage(self.store).free
        size = max(0, int(free - (self.min_free_mb - FILL_BELOW_GUARD_MB) * 2**20))
        filler = self.store / "filler.bin"
        t = self.now()
        with open(filler, "wb") as fh:
            try:  # blocks without writing them, where the filesystem can
                os.posix_fallocate(fh.fileno(), 0, size)
            except OSError:
                chunk = b"\0" * (16 << 20)
                left = size
                while left > 0:
                    left -= fh.write(chunk[: min(left, len(chunk))])
        log.warning("soak: storage filled (%.0f MB, %s)", size / 2**20, self.mode)
        waited = 0.0
        deadline = time.monotonic() + self.s.fill_hold_s
        while time.monotonic() < deadline:
            st = client.status()["pipeline"]
            waited = max(waited, float(st.get("storage_waiting_s", 0.0)))
            time.sleep(0.5)
        filler.unlink()
        self.faults.fills.append(
            {
                "t_s": round(t, 1),
                "mode": self.mode,
                "filler_mb": round(size / 2**20),
                "daemon_waited_s": round(waited, 1),
            }
        )
        log.warning("soak: storage freed (the daemon waited %.1f s)", waited)

    # -- the soak --

    def run(self, h5: Path) -> None:
        from l1forge.online.control.commands import ControlClient

        s = self.s
        cmd = [sys.executable, "-m", "l1forge.cli", "online", "run", "--idle"]
        cmd += ["--state-dir", str(self.state_dir)]
        err = open(self.tmp / "daemon.err", "w")
        daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        tap = TapCounter(f"tcp://127.0.0.1:{self.monitor_port}")
        tap.start()
        try:
            client = self._connect(daemon, ControlClient)
            end = s.minutes * 60
            next_kill, next_freeze, next_swap = s.kill_every_s, s.freeze_every_s / 2, s.swap_every_s
            fill_at = s.fill_at * end
            while self.now() < end:
                client.configure(config=self.config(h5))
                started = client.start()
                run, run_dir = int(started["run"]), Path(started["run_dir"])
                run_end = min(end, self.now() + s.run_minutes * 60)
                while self.now() < run_end:
                    t = self.now()
                    if t >= next_kill:
                        self.kill(client)
                        next_kill += s.kill_every_s
                    if t >= next_freeze:
                        self.freeze(client)
                        next_freeze += s.freeze_every_s
                    if t >= next_swap:
                        self.swap(client)
                        next_swap += s.swap_every_s
                    if t >= fill_at and not self.faults.fills:
                        self.fill(client)
                    st = client.status()
                    if st["state"] == "error":
                        raise SystemExit(f"run {run} went to error: {st.get('error')}")
                    self.rss.append((self.now(), rss_mb(daemon.pid)))
                    time.sleep(RSS_SAMPLE_S)
                summary = client.stop()
                rss_at_stop = rss_mb(daemon.pid)
                self._verify(run, run_dir, summary, tap)
                self.runs[-1]["daemon_rss_mb_at_stop"] = round(rss_at_stop, 1)
            client.shutdown()
            daemon.wait(60)
        finally:
            tap.close()
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
            err.close()

    def _connect(self, daemon: subprocess.Popen, client_cls):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                raise SystemExit("the daemon exited:\n" + (self.tmp / "daemon.err").read_text())
            if (self.state_dir / "endpoints.json").exists():
                return client_cls.from_state_dir(self.state_dir, timeout_s=120)
            time.sleep(0.2)
        raise SystemExit("the daemon did not come up within 120 s")

    def _verify(self, run: int, run_dir: Path, summary: dict, tap: TapCounter) -> None:
        time.sleep(0.5)  # the tap's last messages
        n_sent = int(summary["n_events_in"])
        t = time.monotonic()
        v = verify_run(run_dir, run, n_sent, self.pairs, self.s.events_per_lumisection)
        v["verify_s"] = round(time.monotonic() - t, 1)
        v["events_processed"] = int(summary["n_processed"])
        v["error"] = summary.get("error")
        v["tap_published"] = int(summary.get("tap_batches", 0))
        v["tap_received"] = tap.received.get(run, 0)
        v["dead_workers"] = len(summary.get("dead_workers", []))
        v["redelivered_batches"] = summary.get("redelivered_batches")
        self.runs.append(v)
        log.warning("soak: run %d verified: %s", run, json.dumps(v))
        shutil.rmtree(run_dir)

    def result(self, network_source: str, network: str) -> dict:
        runs = self.runs
        t = np.array([r[0] for r in self.rss])
        rss = np.array([r[1] for r in self.rss])
        growth = None
        if len(rss) >= 10:
            end = t.max()
            early = rss[(t >= 0.2 * end) & (t < 0.4 * end)]
            late = rss[t >= 0.8 * end]
            if len(early) and len(late):
                growth = float(late.mean() - early.mean())
        events = sum(r["events_processed"] for r in runs)
        return {
            "network_source": network_source,
            "network": network,
            "duration_s": round(self.now(), 1),
            "events": events,
            "events_per_s": events / max(1e-9, self.now()),
            "runs": len(runs),
            "worker_kills": len(self.faults.kills),
            "freezes": len(self.faults.freezes),
            "swaps": len(self.faults.swaps),
            "disk_full_events": len(self.faults.fills),
            "verified_lost": sum(r["lost"] for r in runs),
            "verified_duplicated": sum(r["duplicated"] for r in runs),
            "verified_mismatched": sum(r["mismatched"] for r in runs),
            "verified_unattributed": sum(r["unattributed"] for r in runs),
            "verified_stored": sum(r["stored"] for r in runs),
            "manifests_ok": all(r["manifest_ok"] for r in runs),
            "rss_growth_mb": growth,
            "rss_bound_mb": self.s.rss_bound_mb,
            "rss_mb_first_last": [float(rss[0]), float(rss[-1])] if len(rss) else None,
            "rss_mb_per_minute": [  # the daemon's RSS, the first sample of each minute
                round(float(rss[i]), 1) for i in np.unique((t // 60).astype(int), True)[1]
            ],
            "tap_drops": sum(r["tap_published"] - r["tap_received"] for r in runs),
            "tap_published": sum(r["tap_published"] for r in runs),
            "storage_mode": self.mode,
            "faults": {
                "kills": self.faults.kills,
                "freezes": self.faults.freezes,
                "swaps": [{k: v for k, v in sw.items() if k != "ack"} for sw in self.faults.swaps],
                "fills": self.faults.fills,
            },
            "per_run": runs,
            "settings": self.s.__dict__,
            "cpu_count": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0],
        }


def ok(result: dict) -> bool:
    growth = result["rss_growth_mb"]
    return (
        result["runs"] > 0
        and result["verified_lost"] == result["verified_duplicated"] == 0
        and result["verified_mismatched"] == 0
        and result["manifests_ok"]
        and (growth is None or growth <= result["rss_bound_mb"])
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="about 3 minutes (make test)")
    ap.add_argument("--minutes", type=float, help="soak length (default 60; --short: 1.5)")
    ap.add_argument("--run-minutes", type=float, help="length of each run (default 5)")
    ap.add_argument("--kill-every-s", type=float)
    ap.add_argument("--freeze-every-s", type=float)
    ap.add_argument("--swap-every-s", type=float)
    ap.add_argument("--fill-hold-s", type=float)
    ap.add_argument("--rss-bound-mb", type=float)
    ap.add_argument("--random", action="store_true", help="a random-weight network instead")
    ap.add_argument("--network", help="a qnet IR with an input scale op instead")
    ap.add_argument("--events", help="replay this HDF5 (default: the reference sample)")
    ap.add_argument("--no-tmpfs", action="store_true", help="use the quota-like guard")
    ap.add_argument("--no-dqm", action="store_true", help="the daemon's DQM off (memory hunts)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(message)s")
    s = Settings.short() if args.short else Settings()
    for key in ("minutes", "run_minutes", "kill_every_s", "freeze_every_s", "swap_every_s"):
        if getattr(args, key) is not None:
            setattr(s, key, getattr(args, key))
    s.dqm = not args.no_dqm
    for key in ("fill_hold_s", "rss_bound_mb"):
        if getattr(args, key) is not None:
            setattr(s, key, getattr(args, key))
    with tempfile.TemporaryDirectory(prefix="l1f-soak-") as d:
        tmp = Path(d)
        logging.getLogger("l1forge.online.datapath.menu").setLevel(logging.ERROR)
        given = Path(args.network) if args.network else None
        events = Path(args.events) if args.events else None
        pairs, h5, network_source, network = make_pairs(args.random, given, events, tmp)
        with storage_area(tmp, not args.no_tmpfs, s.tmpfs_size) as (store, mode):
            soak = Soak(s, tmp, store, mode, pairs)
            soak.run(h5)
        result = soak.result(network_source, network)
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0 if ok(result) else 1


if __name__ == "__main__":
    sys.exit(main())
