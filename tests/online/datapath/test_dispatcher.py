"""The dispatcher: redelivery of a dead worker's batches, back-pressure through the workers'
credits, and its choice of the batches published on the monitoring tap."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from l1forge.measure import rss_mb
from l1forge.online.datapath.dispatcher import is_sampled
from l1forge.online.datapath.sources import Chunk, Sequencer
from l1forge.online.datapath.storage import AcceptedWriter, verify_run_files

from .runs import assert_run_matches_emulator, expected_run, in_flight, wait_for, worker_pid

EVENTS_PER_LS = 100_000  # the demo's lumisection
N_LUMISECTIONS = 1000
WINDOW = 75  # batches of the demo's online run (300,000 events in 4096-event batches)


def _batches(batch_size: int, n_events: int) -> tuple[np.ndarray, np.ndarray]:
    """(first_seq, n_events) of the batches the Sequencer cuts from a run of `n_events`."""
    seq = Sequencer(1, batch_size, EVENTS_PER_LS, max_events=n_events)
    chunk = Chunk(np.zeros(EVENTS_PER_LS, np.uint64), np.zeros((EVENTS_PER_LS, 19, 3), np.int32))
    batches = []
    while not seq.done:
        batches += seq.feed(chunk)
    batches += seq.flush()
    return np.array([b.first_seq for b in batches]), np.array([len(b) for b in batches])


@pytest.mark.parametrize(("batch_size", "fraction"), [(4096, 0.05), (512, 0.2), (1000, 0.05)])
def test_sampled_batches_follow_the_binomial_law_at_any_batch_size(batch_size, fraction):
    """Each batch is taken with probability `fraction`, independently of its neighbours.

    A bare multiplicative hash of first_seq passed the long-run share but not the spread: its
    counts per 75-batch window had a variance of 0.05-0.4 x the binomial one (a lattice), or, at
    4096 events and 5 %, 4.5 x too many windows without a sampled batch; the demo's 75 batches
    got none. The hash is deterministic, so these checks are exact; the tolerances are what a
    fair coin passes: 4 sigma on the share and on the number of empty windows, and the variance
    of the window counts within 35 % of n f (1 - f) (its sampling error over ~330 windows is ~8 %).
    """
    first_seq, size = _batches(batch_size, N_LUMISECTIONS * EVENTS_PER_LS)
    sampled = np.array([is_sampled(int(s), fraction) for s in first_seq])
    n = len(sampled)
    assert abs(sampled.sum() - n * fraction) < 4 * np.sqrt(n * fraction * (1 - fraction))
    share = size[sampled].sum() / size.sum()
    assert abs(share - fraction) < 4 * np.sqrt(fraction * (1 - fraction) * batch_size / size.sum())
    per_window = sampled[: n // WINDOW * WINDOW].reshape(-1, WINDOW).sum(axis=1)
    dispersion = per_window.var() / (WINDOW * fraction * (1 - fraction))
    assert 0.65 < dispersion < 1.35, dispersion
    p_empty = (1 - fraction) ** WINDOW
    n_windows = len(per_window)
    n_empty = int((per_window == 0).sum())
    assert abs(n_empty - n_windows * p_empty) < 4 * np.sqrt(n_windows * p_empty * (1 - p_empty))


def test_sampling_is_off_at_fraction_0_and_takes_every_batch_at_1():
    first_seq, _ = _batches(4096, 300_000)
    assert not any(is_sampled(int(s), 0.0) for s in first_seq)
    assert all(is_sampled(int(s), 1.0) for s in first_seq)


def test_killed_worker_batches_are_redelivered_and_nothing_is_lost(
    events_h5, models, run_cfg, running_pipeline
):
    n = 8000
    cfg = run_cfg(
        source={"n_events": n, "rate_hz": 5000.0},
        workers={"timeout_s": 60.0},  # only the process exit may reveal the death
    )
    pipe = running_pipeline(cfg, 11)
    pid = worker_pid(pipe, "local-0")
    os.kill(pid, signal.SIGSTOP)  # hold its batches, then kill it with them
    wait_for(lambda: in_flight(pipe, "local-0") >= 1, what="batches on local-0")
    os.kill(pid, signal.SIGKILL)
    assert pipe.wait_source_done(120)
    summary = pipe.stop()
    assert "local-0" in summary.dead_workers
    assert summary.redelivered_batches >= 1
    assert summary.n_processed == summary.n_events_in == n
    assert_run_matches_emulator(summary, pipe, events_h5, models, n)


def test_silent_worker_is_declared_dead_and_its_late_results_are_suppressed(
    events_h5, models, run_cfg, running_pipeline
):
    n = 8000
    cfg = run_cfg(
        source={"n_events": n, "rate_hz": 5000.0},
        workers={"heartbeat_s": 0.2, "timeout_s": 2.5},
    )
    pipe = running_pipeline(cfg, 12)
    pid = worker_pid(pipe, "local-0")
    try:
        assert pipe.status()["dead_workers"] == []
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: in_flight(pipe, "local-0") >= 1, what="batches on local-0")
        wait_for(lambda: "local-0" in pipe.status()["dead_workers"], what="timeout")
        os.kill(pid, signal.SIGCONT)  # it wakes up and answers batches already redelivered
        wait_for(lambda: pipe.status()["duplicates_suppressed"] >= 1, what="late results")
        assert pipe.wait_source_done(120)
    finally:
        os.kill(pid, signal.SIGCONT)
    summary = pipe.stop()
    assert summary.redelivered_batches >= 1
    assert summary.duplicates_suppressed >= 1
    assert_run_matches_emulator(summary, pipe, events_h5, models, n)


def test_worker_killed_after_it_was_declared_dead_is_replaced(
    events_h5, models, run_cfg, running_pipeline
):
    """Frozen past the timeout, the dispatcher forgets the worker; killed then, only the pool
    can see the exit. Its replacement must connect and serve the rest of the run."""
    n = 12000
    cfg = run_cfg(
        source={"n_events": n, "rate_hz": 3000.0},
        workers={"heartbeat_s": 0.2, "timeout_s": 1.5},
    )
    pipe = running_pipeline(cfg, 13)
    pid = worker_pid(pipe, "local-0")
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: "local-0" in pipe.status()["dead_workers"], what="timeout")
        assert "local-0" not in pipe.status()["workers"]
    finally:
        os.kill(pid, signal.SIGKILL)
    replaced = wait_for(
        lambda: [w for w in pipe.status()["workers"] if w.startswith("local-0~")],
        what="a replacement for local-0",
    )
    assert pipe.wait_source_done(120)
    served = pipe.status()["workers"][replaced[0]]
    summary = pipe.stop()
    assert served["pid"] != pid
    assert summary.n_processed == summary.n_events_in == n
    assert_run_matches_emulator(summary, pipe, events_h5, models, n)


class SlowWriter(AcceptedWriter):
    """Real storage behind a slow link: every write waits first."""

    delay_s = 0.04

    def write(self, *args, **kwargs) -> None:
        time.sleep(self.delay_s)
        super().write(*args, **kwargs)


def test_slow_sink_throttles_the_source_with_bounded_memory(
    tmp_path, events_h5, models, run_cfg, running_pipeline
):
    n, batch = 1_000_000, 8192
    cfg = run_cfg(
        source={"n_events": n},
        storage={"events_per_lumisection": 6 * batch},
        batch_size=batch,
    )
    pipe = running_pipeline(cfg, 13, writer_factory=SlowWriter)
    limit = cfg.workers.n * cfg.workers.credits
    pids = [w["pid"] for w in pipe.status()["workers"].values()]
    warm = 2 * cfg.storage.events_per_lumisection  # after two lumisection files are written
    base = peak = None
    max_backlog = 0
    while not pipe.source_done.is_set() or pipe.status()["in_flight_batches"]:
        s = pipe.status()
        assert s["in_flight_batches"] <= limit
        max_backlog = max(max_backlog, s["events_in"] - s["events_processed"])
        rss = sum(rss_mb(p) for p in [os.getpid(), *pids])
        if base is None and s["events_processed"] >= warm:
            base = peak = rss
        elif base is not None:
            peak = max(peak, rss)
        time.sleep(0.02)
    summary = pipe.stop()
    # events read but not collected: the credits plus the two one-batch inproc queues
    assert max_backlog <= (limit + 2) * batch
    assert summary.max_in_flight_batches <= limit
    assert summary.source_blocked_s > 0
    sent_mb = (n - warm) * 19 * 3 * 2 / 1e6  # int16 objects sent after the warm-up
    assert base is not None and peak - base < sent_mb / 4, f"RSS grew by {peak - base:.0f} MB"
    assert (summary.lost, summary.duplicated) == (0, 0)
    assert summary.n_processed == summary.n_events_in == n
    exp = expected_run(events_h5, models, pipe.menu, n)
    assert summary.per_seed == exp["counts"]
    acc = exp["seqs"][np.flatnonzero(exp["bits"])]
    assert verify_run_files(tmp_path / "run13", 13, expected_seqs=acc).ok
