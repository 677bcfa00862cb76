"""The collector: unreadable results are refused (and the batch sent again), and a full disk
stops the run while every accepted event is held."""

from __future__ import annotations

import json
import struct
import threading

import numpy as np
import zmq

from l1forge.online.datapath.protocol import (
    D_BATCH,
    D_CONFIG,
    D_STOP,
    W_CONFIGURED,
    W_HEARTBEAT,
    W_READY,
    W_RESULT,
)
from l1forge.online.datapath.wire import ResultBatch, decode_batch, encode_results

from .runs import assert_run_matches_emulator, expected_run, stored_events, wait_for


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


def test_corrupted_results_from_a_remote_worker_are_sent_again(
    events_h5, models, run_cfg, running_pipeline
):
    n = 6000
    cfg = run_cfg(
        source={"n_events": n},
        workers={"n": 1, "transport": "tcp", "hosts": ["elsewhere"]},
    )
    pipe = running_pipeline(cfg, 16, start=False)
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
        summary = pipe.stop()
    finally:
        stop.set()
        rogue.join(10)
    assert answered and status["bad_results"] == len(answered)
    assert "rogue" in status["dead_workers"]  # stopped after its third unreadable result
    assert summary.failed_batches == {} and summary.n_failed_events == 0
    assert summary.n_processed == summary.n_events_in == n
    assert_run_matches_emulator(summary, pipe, events_h5, models, n)


def test_full_disk_stops_the_run_and_holds_every_accepted_event(
    tmp_path, events_h5, models, run_cfg, running_pipeline
):
    run_dir = tmp_path / "run15"
    run_dir.mkdir()
    # lumisection 1's file goes to /dev/full: the kernel refuses the write
    (run_dir / "run000015_ls00001.root.part").symlink_to("/dev/full")
    n_max = 2_000_000
    # one worker returns batches in order, so lumisection 0 is complete (and written) before
    # lumisection 1; with two, a slow first batch can leave lumisection 0 open when 1 fails
    cfg = run_cfg(source={"n_events": n_max}, workers={"n": 1})
    pipe = running_pipeline(cfg, 15, run_dir)
    wait_for(lambda: pipe.status()["state"] == "error", what="the storage error")
    status = pipe.status()
    assert "run000015_ls00001.root" in status["error"]
    assert status["storage_error"]
    assert pipe.wait_source_done(60)  # the source stopped taking data
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
