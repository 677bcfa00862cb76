"""Helpers for the data-path tests: run configurations of a looped replay, what a lossless run
must give, the run's ROOT files read back, and waiting on a running pipeline."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import uproot

from l1forge.models import qnet
from l1forge.models.emulator import Emulator
from l1forge.online.config import run_config_from_dict
from l1forge.online.datapath.backends import outputs_float
from l1forge.online.datapath.menu import Menu
from l1forge.online.datapath.pipeline import Pipeline
from l1forge.online.datapath.storage import TREE, verify_run_files
from l1forge.sim.dataset import read_events

N_RUN = 6000  # events per test run (the 1700-event file replayed in a loop)
BATCH = 256
PER_LS = 2000


def model_scores(models: dict[str, Path], x: np.ndarray) -> dict[str, np.ndarray]:
    """Each model's score (first output, real-valued) straight from the emulator."""
    out = {}
    for name, path in models.items():
        net = qnet.load(path)
        emu = Emulator(net)
        out[name] = outputs_float(net, emu.run(x))[:, 0]
        emu.close()
    return out


def seeds_for(events_h5: Path, models: dict[str, Path]) -> list[dict]:
    """Seeds whose thresholds are score quantiles of the file, so every seed fires."""
    s = model_scores(models, read_events(events_h5).inputs)
    q = lambda name, f: float(np.quantile(s[name], f))  # noqa: E731
    return [
        {"name": "AD_Loose", "model": "ad", "threshold": q("ad", 0.8)},
        {"name": "AD_Tight", "model": "ad", "threshold": q("ad", 0.97), "prescale": 2},
        {"name": "Classifier", "model": "classifier", "threshold": q("classifier", 0.9)},
        {"name": "ZeroBias", "model": "", "prescale": 25},
    ]


def make_cfg(tmp: Path, events_h5: Path, models: dict[str, Path], **over) -> object:
    """A RunConfig for a looped replay of `events_h5` (keys of `over` replace sections)."""
    raw = {
        "source": {"kind": "replay", "path": str(events_h5), "loop": True, "n_events": N_RUN},
        "backend": {"kind": "emulator", "models": {k: str(v) for k, v in models.items()}},
        "workers": {"n": 2, "credits": 2, "heartbeat_s": 0.2, "timeout_s": 2.0},
        "menu": {"seeds": seeds_for(events_h5, models)},
        "storage": {"out_dir": str(tmp), "events_per_lumisection": PER_LS, "min_free_mb": 1},
        "monitor": {"fraction": 0.25},
        "batch_size": BATCH,
        "state_dir": str(tmp / "state"),
    }
    for key, value in over.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return run_config_from_dict(raw, tmp)


def expected_run(events_h5: Path, models: dict[str, Path], menu: Menu, n: int) -> dict:
    """What a lossless run of `n` replayed events must give: bits, objects, per-seed counts."""
    ev = read_events(events_h5)
    seqs = np.arange(n, dtype=np.uint64)
    idx = (seqs % np.uint64(len(ev))).astype(np.int64)
    bits = menu.decide(model_scores(models, ev.inputs[idx]), seqs)
    return {
        "seqs": seqs,
        "bits": bits,
        "objects_hw": ev.objects_hw[idx],
        "event": ev.event[idx],
        "counts": menu.counts(bits),
    }


def stored_events(run_dir: Path) -> dict[str, np.ndarray]:
    """Every event in the run's ROOT files, sorted by sequence number."""
    parts = []
    for f in sorted(run_dir.glob("run*_ls*.root")):
        with uproot.open(f) as rf:
            parts.append(rf[TREE].arrays(["seq", "seed_bits", "objects_hw", "event"], library="np"))
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cols["seq"])
    out = {k: v[order] for k, v in cols.items()}
    out["objects_hw"] = (
        np.stack(out["objects_hw"]) if out["objects_hw"].dtype == object else out["objects_hw"]
    )
    return out


def assert_stored_equal_expected(run_dir: Path, run: int, exp: dict) -> None:
    acc = np.flatnonzero(exp["bits"])
    summary = verify_run_files(run_dir, run, expected_seqs=exp["seqs"][acc])
    assert summary.ok, summary.to_json()
    got = stored_events(run_dir)
    np.testing.assert_array_equal(got["seq"], exp["seqs"][acc])
    np.testing.assert_array_equal(got["seed_bits"], exp["bits"][acc])
    np.testing.assert_array_equal(got["event"], exp["event"][acc])
    np.testing.assert_array_equal(
        np.asarray(got["objects_hw"]).reshape(-1, 19, 3), exp["objects_hw"][acc]
    )


def assert_run_matches_emulator(summary, pipe: Pipeline, events_h5, models, n: int) -> None:
    """Nothing lost or duplicated, and the run's seed counts and stored events are what the
    emulator and the run's menu give for the first `n` replayed events."""
    assert (summary.lost, summary.duplicated) == (0, 0)
    exp = expected_run(events_h5, models, pipe.menu, n)
    assert summary.per_seed == exp["counts"]
    assert_stored_equal_expected(pipe.run_dir, pipe.run, exp)


def wait_for(predicate, timeout_s: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def worker_pid(pipe: Pipeline, name: str) -> int:
    return wait_for(
        lambda: pipe.status()["workers"].get(name, {}).get("pid"), what=f"worker {name}"
    )


def in_flight(pipe: Pipeline, name: str) -> int:
    return pipe.status()["workers"].get(name, {}).get("in_flight", 0)


def scaled_ad(seed: int = 3, name: str = "scaled_ad"):
    """A 57-input anomaly-detector-shaped IR that starts with a ``scale`` op (the run-time
    input scaling of a register build): scale -> quantize -> 57x4 dense/relu -> mu -> sum mu^2;
    outputs (score, mu), so output element 0 is the score the seed thresholds compare with."""
    from l1forge.models.build import NetBuilder
    from l1forge.models.fixed import Fixed

    n_in = 57
    rng = np.random.default_rng(seed)
    b = NetBuilder(name, n_in, Fixed(True, 16, 16))
    b.scale("scale", rng.integers(-64, 64, n_in), Fixed(True, 7, 7), rng.integers(0, 5, n_in))
    b.quantize("x_q", Fixed(True, 14, 8), "RND_CONV", "SAT")
    w = Fixed(True, 8, 1)
    b.dense("dense0", rng.integers(-128, 128, (n_in, 4)), w, rng.integers(-128, 128, 4), w)
    b.relu("relu0", Fixed(False, 8, 4), "RND_CONV", "SAT")
    b.dense("mu_dense", rng.integers(-128, 128, (4, 2)), w, rng.integers(-128, 128, 2), w)
    b.quantize("mu", Fixed(True, 12, 6), "RND_CONV", "SAT")
    b.sum_squares("score")
    return b.build(outputs=("score", "mu"))


def new_scaling(net, seed: int = 11) -> tuple[list[int], list[int]]:
    """Random offsets and shifts inside the register ranges of ``net``'s scale op."""
    from l1forge.firmware.registers import split_scaling

    sc, _ = split_scaling(net)
    of = sc.scale.array_formats["offset"]
    rng = np.random.default_rng(seed)
    n = net.input_specs[0].size
    off = rng.integers(of.min_int, of.max_int + 1, n)
    sh = rng.integers(sc.shift_lo, sc.shift_hi + 1, n)
    return off.tolist(), sh.tolist()


def emulate(net, x: np.ndarray) -> np.ndarray:
    """Integer outputs of ``net`` on ``x`` from the bit-exact emulator."""
    with Emulator(net) as emu:
        return emu.run(x)


class TapBatches:
    """Records ``(first_seq, n_events)`` of every batch the monitoring tap publishes (run with
    ``monitor.fraction`` 1: every batch), so a test knows the run's real batch boundaries.
    Start it as the pipeline's ``tap_subscriber``; ``close`` after the pipeline stopped."""

    def __init__(self) -> None:
        import threading

        self.batches: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, pipe: Pipeline) -> None:
        import threading

        import zmq

        from l1forge.online.datapath.wire import TOPIC_MONITOR, decode_results

        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(pipe.monitor_endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, TOPIC_MONITOR)

        def loop() -> None:
            try:
                while not self._stop.is_set():
                    if sock.poll(50):
                        _, *frames = sock.recv_multipart()
                        r = decode_results(frames)
                        self.batches.append((r.first_seq, len(r)))
            finally:
                sock.close(0)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def close(self, n_events: int) -> list[tuple[int, int]]:
        """Wait until the batches seen hold the run's ``n_events`` events, stop listening;
        the batches, sorted by first_seq."""
        wait_for(lambda: sum(n for _, n in set(self.batches)) >= n_events, 30, "the tap")
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        return sorted(set(self.batches))


def assert_one_switch_at_a_batch_boundary(
    seq: np.ndarray, is_old: np.ndarray, is_new: np.ndarray, batches: list[tuple[int, int]]
) -> int:
    """Every event is the old or the new (``is_old | is_new``), the strictly-old ones all come
    before the strictly-new ones, and exactly one batch boundary of the run separates the last
    old event from the first new one; returns that boundary's sequence number."""
    starts = [s for s, _ in batches]
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(batches))
    assert np.all(is_old | is_new)
    last_old = int(seq[is_old & ~is_new].max())
    first_new = int(seq[is_new & ~is_old].min())
    assert last_old < first_new
    between = [s for s in starts if last_old < s <= first_new]
    assert len(between) == 1, (last_old, first_new, between)
    return between[0]
