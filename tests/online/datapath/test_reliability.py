"""The data path under faults: killed or frozen workers, slow sink, hostile input, full disk."""

from __future__ import annotations

import collections
import json
import os
import signal
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import zmq

from l1forge.online.datapath.pipeline import Pipeline
from l1forge.online.datapath.protocol import (
    D_BATCH,
    D_CONFIG,
    D_STOP,
    W_CONFIGURED,
    W_HEARTBEAT,
    W_READY,
    W_RESULT,
)
from l1forge.online.datapath.storage import AcceptedWriter, verify_run_files
from l1forge.online.datapath.wire import (
    MAX_EVENTS_PER_MESSAGE,
    EventBatch,
    ResultBatch,
    WireError,
    decode_batch,
    encode_batch,
    encode_results,
)
from l1forge.sim.dataset import read_events

from .test_pipeline import assert_stored_equal_expected, expected_run, make_cfg, stored_events

# the documented wire header (online/datapath/wire.py): fields 7 = count, 8 = dtype code,
# 11..13 = objects shape, 17 = payload bytes, 18 = payload CRC-32, 19 = header CRC-32
HEADER = struct.Struct("<4sHBBQQQIBBH3IId32sQII")


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


@pytest.fixture(scope="module")
def models(tiny_ir_path, tiny_classifier_ir_path) -> dict[str, Path]:
    return {"ad": tiny_ir_path, "classifier": tiny_classifier_ir_path}


def test_killed_worker_batches_are_redelivered_and_nothing_is_lost(tmp_path, events_h5, models):
    n = 8000
    cfg = make_cfg(
        tmp_path,
        events_h5,
        models,
        source={"n_events": n, "rate_hz": 5000.0},
        workers={"timeout_s": 60.0},  # only the process exit may reveal the death
    )
    pipe = Pipeline(cfg, 11, tmp_path / "run11")
    pipe.start()
    try:
        pid = worker_pid(pipe, "local-0")
        os.kill(pid, signal.SIGSTOP)  # hold its batches, then kill it with them
        wait_for(lambda: in_flight(pipe, "local-0") >= 1, what="batches on local-0")
        os.kill(pid, signal.SIGKILL)
        assert pipe.wait_source_done(120)
    finally:
        summary = pipe.stop()
    assert "local-0" in summary.dead_workers
    assert summary.redelivered_batches >= 1
    assert (summary.lost, summary.duplicated) == (0, 0)
    assert summary.n_processed == summary.n_events_in == n
    exp = expected_run(events_h5, models, pipe.menu, n)
    assert summary.per_seed == exp["counts"]
    assert_stored_equal_expected(tmp_path / "run11", 11, exp)


def test_silent_worker_is_declared_dead_and_its_late_results_are_suppressed(
    tmp_path, events_h5, models
):
    n = 8000
    cfg = make_cfg(
        tmp_path,
        events_h5,
        models,
        source={"n_events": n, "rate_hz": 5000.0},
        workers={"heartbeat_s": 0.2, "timeout_s": 2.5},
    )
    pipe = Pipeline(cfg, 12, tmp_path / "run12")
    pipe.start()
    try:
        pid = worker_pid(pipe, "local-0")
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
    assert (summary.lost, summary.duplicated) == (0, 0)
    exp = expected_run(events_h5, models, pipe.menu, n)
    assert summary.per_seed == exp["counts"]
    assert_stored_equal_expected(tmp_path / "run12", 12, exp)


class SlowWriter(AcceptedWriter):
    """Real storage behind a slow link: every write waits first."""

    delay_s = 0.04

    def write(self, *args, **kwargs) -> None:
        time.sleep(self.delay_s)
        super().write(*args, **kwargs)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_slow_sink_throttles_the_source_with_bounded_memory(tmp_path, events_h5, models):
    n, batch = 1_000_000, 8192
    cfg = make_cfg(
        tmp_path,
        events_h5,
        models,
        source={"n_events": n},
        storage={"events_per_lumisection": 6 * batch},
        batch_size=batch,
    )
    pipe = Pipeline(cfg, 13, tmp_path / "run13", writer_factory=SlowWriter)
    pipe.start()
    limit = cfg.workers.n * cfg.workers.credits
    pids = [w["pid"] for w in pipe.status()["workers"].values()]
    warm = 2 * cfg.storage.events_per_lumisection  # after two lumisection files are written
    base = peak = None
    max_backlog = 0
    try:
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
    finally:
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


def _reheader(frames: list, *, crc_payload: bool = True, **fields) -> list:
    """Frames with header fields replaced and the checksums made consistent again."""
    names = {"version": 1, "kind": 2, "count": 7, "dtype": 8, "shape0": 11, "shape1": 12}
    f = list(HEADER.unpack(bytes(frames[0])))
    for k, v in fields.items():
        f[names[k]] = v
    payload = [bytes(p) for p in frames[1:]]
    if crc_payload:
        crc = 0
        for p in payload:
            crc = zlib.crc32(p, crc)
        f[17], f[18] = sum(len(p) for p in payload), crc
    body = HEADER.pack(*f[:-1], 0)
    return [HEADER.pack(*f[:-1], zlib.crc32(body[:-4])), *payload]


def hostile_messages(good: list, n: int, rng: np.random.Generator) -> list[list[bytes]]:
    """`n` malformed or hostile messages of many kinds, derived from a good message."""
    head, ev, obj = (bytes(f) for f in good)
    k = len(ev) // 8
    nan_obj = np.full(k * 57, np.nan, dtype=np.float32).tobytes()
    inf_obj = np.full(k * 57, np.inf, dtype=np.float32).tobytes()
    big = np.frombuffer(obj, dtype=np.int16).copy()
    big[::3] = 5000  # pT beyond 12 bits
    results = ResultBatch(
        0, 0, 0, np.arange(4, dtype=np.uint64), np.full((4, 1), np.nan),
        np.zeros(4, np.uint32), np.zeros((0, 19, 3), np.int16), np.zeros(0, np.uint32), 0.0, "x",
    )  # fmt: skip
    makers = [
        lambda: [rng.bytes(int(rng.integers(0, 300)))],
        lambda: [head[: int(rng.integers(0, len(head)))], ev, obj],
        lambda: [head[:4] + struct.pack("<H", int(rng.integers(2, 65535))) + head[6:], ev, obj],
        lambda: [head, ev],
        lambda: [head, ev, obj, b"extra"],
        lambda: [head, ev, obj[: -int(rng.integers(1, 100))]],
        lambda: [head, ev, obj + b"\0\0"],
        lambda: [head, ev, obj[:10] + bytes([obj[10] ^ 0xFF]) + obj[11:]],
        lambda: _reheader(good, count=int(rng.integers(MAX_EVENTS_PER_MESSAGE + 1, 1 << 32))),
        lambda: _reheader(good, count=k, dtype=int(rng.integers(3, 256))),
        lambda: _reheader(good, shape1=18),
        lambda: _reheader([head, ev, big.tobytes()]),
        lambda: _reheader([head, ev, nan_obj], dtype=2),
        lambda: _reheader([head, ev, inf_obj], dtype=2),
        lambda: [bytes(f) for f in encode_results(results)],
        lambda: [b""],
    ]
    return [makers[int(rng.integers(0, len(makers)))]() for _ in range(n)]


def test_ten_thousand_hostile_messages_are_rejected_by_reason_and_data_flows_after(
    tmp_path, events_h5, models
):
    ctx = zmq.Context()
    daq = ctx.socket(zmq.PUSH)
    daq.setsockopt(zmq.LINGER, 0)
    daq.setsockopt(zmq.SNDTIMEO, 30_000)
    daq.setsockopt(zmq.SNDHWM, 100_000)
    port = daq.bind_to_random_port("tcp://127.0.0.1")
    cfg = make_cfg(
        tmp_path,
        events_h5,
        models,
        source={"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{port}", "loop": False},
    )
    ev = read_events(events_h5)
    n_good, per_msg = 1000, 200
    good = [
        encode_batch(
            EventBatch(99, 5 + s, 0, ev.event[s : s + per_msg], ev.objects_hw[s : s + per_msg])
        )
        for s in range(0, n_good, per_msg)
    ]
    bad = hostile_messages(good[0], 10_000, np.random.default_rng(0))
    truth = collections.Counter()
    for frames in bad:
        with pytest.raises(WireError) as err:
            decode_batch(frames)
        truth[err.value.reason] += 1
    pipe = Pipeline(cfg, 14, tmp_path / "run14")
    try:
        pipe.start()
        for frames in bad:
            daq.send_multipart(frames)
        for frames in good:
            daq.send_multipart(frames, copy=False)
        wait_for(lambda: pipe.status()["events_processed"] == n_good, what="the good events")
        status = pipe.status()
        assert status["state"] == "running" and status["error"] is None
        assert status["rejected"] == dict(truth)
    finally:
        summary = pipe.stop()
        daq.close(0)
        ctx.term()
    assert sum(summary.rejected.values()) == 10_000
    assert len(summary.rejected) >= 8, summary.rejected  # many different reasons
    assert {"magic", "version", "truncated", "size", "checksum", "count", "range"} <= set(
        summary.rejected
    )
    assert (summary.lost, summary.duplicated) == (0, 0)
    assert summary.n_processed == summary.n_events_in == n_good
    exp = expected_run(events_h5, models, pipe.menu, n_good)  # the daemon numbers them 0..999
    assert summary.per_seed == exp["counts"]
    assert_stored_equal_expected(tmp_path / "run14", 14, exp)


def test_full_disk_stops_the_run_and_holds_every_accepted_event(tmp_path, events_h5, models):
    run_dir = tmp_path / "run15"
    run_dir.mkdir()
    # lumisection 1's file goes to /dev/full: the kernel refuses the write
    (run_dir / "run000015_ls00001.root.part").symlink_to("/dev/full")
    n_max = 2_000_000
    cfg = make_cfg(tmp_path, events_h5, models, source={"n_events": n_max})
    pipe = Pipeline(cfg, 15, run_dir)
    pipe.start()
    try:
        wait_for(lambda: pipe.status()["state"] == "error", what="the storage error")
        status = pipe.status()
        assert "run000015_ls00001.root" in status["error"]
        assert status["storage_error"]
        assert pipe.wait_source_done(60)  # the source stopped taking data
    finally:
        summary = pipe.stop()
    assert summary.error and "storage failed" in summary.error
    assert summary.n_events_in < n_max
    assert (summary.lost, summary.duplicated) == (0, 0)
    assert summary.n_processed == summary.n_events_in
    assert [f["lumisection"] for f in summary.files] == [0]
    exp = expected_run(events_h5, models, pipe.menu, summary.n_events_in)
    accepted = exp["seqs"][np.flatnonzero(exp["bits"])]
    stored = stored_events(run_dir)["seq"]
    held = pipe.held_events()["seq"]
    assert summary.held_accepted_events == len(held) > 0
    assert len(np.intersect1d(stored, held)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([stored, held])), accepted)


def _rogue_worker(endpoint: str, stop: threading.Event, answered: list) -> None:
    """A remote worker that speaks the protocol but returns corrupted results."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    hello = {"name": "rogue", "pid": 1, "host": "elsewhere", "credits": 1}
    sock.send_multipart([W_READY, json.dumps(hello).encode()])
    try:
        while not stop.is_set():
            if not sock.poll(50):
                sock.send_multipart([W_HEARTBEAT])
                continue
            kind, *frames = sock.recv_multipart()
            if kind == D_CONFIG:
                sock.send_multipart([W_CONFIGURED, b'{"models": {}}'])
            elif kind == D_BATCH:
                b = decode_batch(frames)
                n = len(b)
                r = ResultBatch(
                    b.run, b.first_seq, b.lumisection, b.event, np.zeros((n, 2)),
                    np.zeros(n, np.uint32), np.zeros((0, 19, 3), np.int16),
                    np.zeros(0, np.uint32), 0.0, "rogue",
                )  # fmt: skip
                out = [bytes(f) for f in encode_results(r)]
                out[2] = out[2][:-1] + b"\x01"  # one flipped byte: the checksum fails
                sock.send_multipart([W_RESULT, struct.pack("<Q", b.first_seq), *out])
                answered.append(b.first_seq)
            elif kind == D_STOP:
                break
            sock.send_multipart([W_HEARTBEAT])
    finally:
        sock.close(0)
        ctx.term()


def test_corrupted_results_from_a_remote_worker_are_sent_again(tmp_path, events_h5, models):
    n = 6000
    cfg = make_cfg(
        tmp_path,
        events_h5,
        models,
        source={"n_events": n},
        workers={"n": 1, "transport": "tcp", "hosts": ["elsewhere"]},
    )
    pipe = Pipeline(cfg, 16, tmp_path / "run16")
    stop, answered = threading.Event(), []
    starting = threading.Thread(target=pipe.start)
    starting.start()
    wait_for(lambda: pipe.worker_endpoint, what="the worker endpoint")
    rogue = threading.Thread(target=_rogue_worker, args=(pipe.worker_endpoint, stop, answered))
    rogue.start()
    try:
        starting.join(120)
        assert pipe.state == "running"
        assert pipe.wait_source_done(120)
        wait_for(lambda: pipe.dispatcher.drained.is_set(), what="the drain")
        status = pipe.status()
    finally:
        summary = pipe.stop()
        stop.set()
        rogue.join(10)
    assert answered and status["bad_results"] == len(answered)
    assert "rogue" in status["dead_workers"]  # stopped after its third unreadable result
    assert summary.failed_batches == {} and summary.n_failed_events == 0
    assert (summary.lost, summary.duplicated) == (0, 0)
    assert summary.n_processed == summary.n_events_in == n
    exp = expected_run(events_h5, models, pipe.menu, n)
    assert summary.per_seed == exp["counts"]
    assert_stored_equal_expected(tmp_path / "run16", 16, exp)
