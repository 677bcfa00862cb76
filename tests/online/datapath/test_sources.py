"""Event sources: HDF5 replay, live Pythia, the ZeroMQ input (also under hostile input in a
running pipeline), and the sequencer's numbering."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import shutil
import socket
import struct
import threading
import time
import zlib

import h5py
import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from l1forge.errors import ConfigError, DataFormatError
from l1forge.online import security
from l1forge.online.config import SourceConfig
from l1forge.online.datapath.sources import (
    Chunk,
    PythiaSource,
    ReplaySource,
    Sequencer,
    ZmqInputSource,
    make_source,
)
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
from l1forge.sim.l1objects import ETA_MAX_HW, ETA_MIN_HW, PHI_MAX_HW, PHI_MIN_HW, PT_MAX_HW

from .runs import assert_run_matches_emulator, wait_for

# the documented wire header (online/datapath/wire.py): fields 7 = count, 8 = dtype code,
# 11..13 = objects shape, 17 = payload bytes, 18 = payload CRC-32, 19 = header CRC-32
HEADER = struct.Struct("<4sHBBQQQIBBH3IId32sQII")


def chunks_of(n: int, sizes: list[int], seed: int = 0) -> list[Chunk]:
    rng = np.random.default_rng(seed)
    out, pos = [], 0
    for k in sizes:
        k = min(k, n - pos)
        obj = rng.integers(0, 100, (k, 19, 3)).astype(np.int16)
        out.append(Chunk(np.arange(pos, pos + k, dtype=np.uint64), obj))
        pos += k
    return out


@pytest.mark.parametrize(
    ("batch", "per_ls", "sizes"),
    [(64, 1000, [37, 500, 1, 999, 463]), (100, 100, [250, 250, 500]), (7, 10, [3] * 40)],
)
def test_sequencer_numbers_contiguously_and_never_crosses_a_lumisection(batch, per_ls, sizes):
    n = sum(sizes)
    chunks = chunks_of(n, sizes)
    seq = Sequencer(5, batch, per_ls, max_wait_s=1e9)
    batches = [b for c in chunks for b in seq.feed(c, now=0.0)] + seq.flush()
    assert [b.first_seq for b in batches] == list(np.cumsum([0] + [len(b) for b in batches])[:-1])
    for b in batches:
        assert b.run == 5 and 0 < len(b) <= batch
        assert b.lumisection == b.first_seq // per_ls
        assert (b.first_seq + len(b) - 1) // per_ls == b.lumisection
    np.testing.assert_array_equal(
        np.concatenate([b.objects_hw for b in batches]),
        np.concatenate([c.objects_hw for c in chunks]),
    )
    np.testing.assert_array_equal(np.concatenate([b.event for b in batches]), np.arange(n))
    assert seq.n_events == n


def test_sequencer_caps_the_run_and_flushes_a_partial_batch_after_max_wait():
    seq = Sequencer(1, 100, 10_000, max_events=250, max_wait_s=0.5)
    c = chunks_of(1000, [30, 1000])
    assert seq.feed(c[0], now=0.0) == []  # waits for more events
    assert [len(b) for b in seq.feed(Chunk(c[0].event[:0], c[0].objects_hw[:0]), now=0.6)] == [30]
    got = seq.feed(c[1], now=0.7)
    assert [len(b) for b in got] == [100, 100, 20]
    assert seq.done and seq.n_events == 250
    assert seq.feed(c[1], now=0.8) == []


def test_replay_yields_the_file_in_chunks_and_loops(events_h5):
    ev = read_events(events_h5)
    src = ReplaySource([events_h5], chunk_events=500)
    got = list(src.chunks(threading.Event()))
    assert [len(c) for c in got] == [500, 500, 500, 200]
    np.testing.assert_array_equal(np.concatenate([c.objects_hw for c in got]), ev.objects_hw)
    assert got[0].objects_hw.dtype == np.int16
    np.testing.assert_array_equal(np.concatenate([c.event for c in got]), ev.event)

    stop = threading.Event()
    looped = ReplaySource([events_h5, events_h5], loop=True, chunk_events=1000)
    n = 0
    for c in looped.chunks(stop):
        n += len(c)
        if n >= 4 * len(ev) + 1:
            stop.set()
    assert n > 4 * len(ev)  # two files, more than twice over
    assert (
        make_source(
            SourceConfig(kind="replay", paths=(str(events_h5),), rate_hz=200.0)
        ).chunk_events
        == 10
    )


def test_replay_refuses_a_file_that_is_not_an_event_file(tmp_path):
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataFormatError, match="not an l1forge event file"):
        ReplaySource([bad])
    with pytest.raises(DataFormatError, match="not found"):
        ReplaySource([tmp_path / "missing.h5"])
    with pytest.raises(ConfigError):
        ReplaySource([])


def test_zmq_input_counts_rejections_and_keeps_good_batches(events_h5):
    ev = read_events(events_h5)
    ctx = zmq.Context()
    src = ZmqInputSource("tcp://127.0.0.1:*", ctx=ctx)
    daq = ctx.socket(zmq.PUSH)
    daq.setsockopt(zmq.LINGER, 0)
    daq.connect(src.endpoint)
    good = encode_batch(EventBatch(1, 0, 0, ev.event[:50], ev.objects_hw[:50]))
    try:
        daq.send_multipart([b"garbage"])
        daq.send_multipart([bytes(good[0]), bytes(good[1])])
        daq.send_multipart(good)
        stop = threading.Event()
        got = []
        for c in src.chunks(stop):
            if len(c):
                got.append(c)
                stop.set()
        assert src.rejected() == {"magic": 1, "truncated": 1}
        np.testing.assert_array_equal(got[0].objects_hw, ev.objects_hw[:50])
        assert got[0].objects_hw.dtype == np.int16
    finally:
        daq.close(0)
        src.close()
        ctx.term()


def test_pythia_source_streams_live_events():
    src = PythiaSource(("minbias",), pileup=0.0, seed=3, shard_events=20)
    stop = threading.Event()
    got = []
    try:
        for c in src.chunks(stop):
            got.append(c)
            if sum(len(g) for g in got) >= 40:
                stop.set()
    finally:
        src.close()
    obj = np.concatenate([c.objects_hw for c in got])
    assert len(obj) >= 40 and obj.dtype == np.int16
    assert obj[..., 0].min() >= 0 and obj[..., 0].max() <= PT_MAX_HW
    assert ETA_MIN_HW <= obj[..., 1].min() and obj[..., 1].max() <= ETA_MAX_HW
    assert PHI_MIN_HW <= obj[..., 2].min() and obj[..., 2].max() <= PHI_MAX_HW
    assert (obj[:, 0, 0] > 0).mean() > 0.5  # most events have some missing transverse energy
    assert src.proc.poll() is not None  # the generator process is gone


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
    events_h5, models, run_cfg, zmq_ctx, running_pipeline
):
    daq = zmq_ctx.socket(zmq.PUSH)
    daq.setsockopt(zmq.LINGER, 0)
    daq.setsockopt(zmq.SNDTIMEO, 30_000)
    daq.setsockopt(zmq.SNDHWM, 100_000)
    port = daq.bind_to_random_port("tcp://127.0.0.1")
    cfg = run_cfg(source={"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{port}", "loop": False})
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
    pipe = running_pipeline(cfg, 14)
    for frames in bad:
        daq.send_multipart(frames)
    for frames in good:
        daq.send_multipart(frames, copy=False)
    wait_for(lambda: pipe.status()["events_processed"] == n_good, what="the good events")
    status = pipe.status()
    assert status["state"] == "running" and status["error"] is None
    assert status["rejected"] == dict(truth)
    summary = pipe.stop()
    assert sum(summary.rejected.values()) == 10_000
    assert len(summary.rejected) >= 8, summary.rejected  # many different reasons
    assert {"magic", "version", "truncated", "size", "checksum", "count", "range"} <= set(
        summary.rejected
    )
    assert summary.n_processed == summary.n_events_in == n_good
    # the daemon numbers them 0..999
    assert_run_matches_emulator(summary, pipe, events_h5, models, n_good)


def test_an_oversized_message_is_rejected_and_its_sender_stays_connected(events_h5, zmq_ctx):
    ev = read_events(events_h5)
    limit = 64 << 10
    src = ZmqInputSource("tcp://127.0.0.1:*", ctx=zmq_ctx, max_message_bytes=limit)
    daq = zmq_ctx.socket(zmq.PUSH)
    daq.setsockopt(zmq.LINGER, 0)
    events = daq.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    daq.connect(src.endpoint)
    big = encode_batch(EventBatch(1, 0, 0, ev.event[:1000], ev.objects_hw[:1000]))
    assert limit < sum(len(memoryview(f).cast("B")) for f in big) < 4 * limit
    small = [
        encode_batch(EventBatch(1, s, 0, ev.event[s : s + 50], ev.objects_hw[s : s + 50]))
        for s in range(0, 500, 50)
    ]
    try:
        daq.send_multipart(big, copy=False)
        for frames in small:  # queued behind it: a dropped connection would lose them
            daq.send_multipart(frames, copy=False)
        stop = threading.Event()
        got = []
        for c in src.chunks(stop):
            got.append(c)
            if sum(len(g) for g in got) >= 500:
                stop.set()
        assert src.rejected() == {"oversize": 1}
        np.testing.assert_array_equal(
            np.concatenate([g.objects_hw for g in got]), ev.objects_hw[:500]
        )
        seen = []
        while events.poll(200):
            seen.append(recv_monitor_message(events)["event"])
        assert seen == [zmq.EVENT_CONNECTED]  # one connection, never dropped
    finally:
        daq.disable_monitor()
        events.close(0)
        daq.close(0)
        src.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _daq_batches(ev, n: int, per_msg: int, first: int = 0) -> list[list]:
    return [
        encode_batch(EventBatch(7, s, 0, ev.event[s : s + per_msg], ev.objects_hw[s : s + per_msg]))
        for s in range(first, first + n, per_msg)
    ]


def _push(ctx: zmq.Context, endpoint: str, keys, *, bind: bool = False) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 30_000)
    if bind:
        security.bind_server(sock, endpoint, keys)
    else:
        security.connect_client(sock, endpoint, keys)
    return sock


def test_a_bound_curve_source_takes_events_only_from_authorized_senders(
    tmp_path, events_h5, models, run_cfg, running_pipeline
):
    """The daemon binds the input (source.bind) as a CURVE server with network.curve_keys: the
    authorized sender's events are stored, a sender with a key not in authorized_clients (and
    one without keys) delivers nothing, and the run goes on."""
    keys = security.generate_keys(tmp_path / "keys")
    stranger = security.generate_keys(tmp_path / "stranger")
    forged = dataclasses.replace(stranger, server_public=keys.server_public)
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    cfg = run_cfg(
        source={"kind": "zmq", "endpoint": endpoint, "bind": True, "loop": False},
        network={"curve_keys": str(keys.folder)},
    )
    ev = read_events(events_h5)
    pipe = running_pipeline(cfg, 21)
    ctx = zmq.Context()
    senders = [_push(ctx, endpoint, k) for k in (forged, None, keys)]
    intruder, keyless, daq = senders
    try:
        for frames in _daq_batches(ev, 400, 100, first=1000):  # would be events 0..399
            intruder.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
            keyless.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        wait_for(lambda: pipe.status()["source_refused"] >= 2, what="both refused handshakes")
        assert pipe.status()["events_in"] == 0
        n_good = 1000
        for frames in _daq_batches(ev, n_good, 200):
            daq.send_multipart(frames, copy=False)
        wait_for(lambda: pipe.status()["events_processed"] == n_good, what="the good events")
        status = pipe.status()
        assert status["state"] == "running" and status["error"] is None
        assert status["rejected"] == {}
        summary = pipe.stop()
    finally:
        for s in senders:
            s.close(0)
        security.stop_authenticator(ctx)
        ctx.term()
    assert summary.n_processed == summary.n_events_in == n_good
    assert_run_matches_emulator(summary, pipe, events_h5, models, n_good)


def test_a_connecting_curve_source_talks_only_to_the_daq_with_the_expected_key(
    tmp_path, events_h5, models, run_cfg, running_pipeline
):
    """The DAQ binds (the default topology) as a CURVE server; the daemon connects with
    source.curve_keys (the DAQ's public key and an authorized client pair): a DAQ impostor on
    the same endpoint delivers nothing, the real DAQ then delivers every event."""
    daq_keys = security.generate_keys(tmp_path / "daq")
    daemon_side = tmp_path / "daemon-side"  # what the DAQ hands the daemon: no server secret
    shutil.copytree(daq_keys.folder, daemon_side)
    (daemon_side / "server.key_secret").unlink()
    impostor_keys = security.generate_keys(tmp_path / "impostor")
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    cfg = run_cfg(
        source={"kind": "zmq", "endpoint": endpoint, "loop": False, "curve_keys": str(daemon_side)}
    )
    ev = read_events(events_h5)
    ctx, impostor_ctx = zmq.Context(), zmq.Context()  # one authenticator per context
    impostor = _push(impostor_ctx, endpoint, impostor_keys, bind=True)
    failed = security.watch_handshakes(impostor)
    pipe = running_pipeline(cfg, 22)
    daq = None
    try:
        for frames in _daq_batches(ev, 400, 100, first=1000):
            with contextlib.suppress(zmq.Again):
                impostor.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        wait_for(lambda: failed.poll(100) != 0, what="the impostor's failed handshake")
        assert pipe.status()["events_in"] == 0
        impostor.disable_monitor()
        failed.close(0)
        impostor.close(0)
        while daq is None:  # ZeroMQ frees the impostor's port in its I/O thread, a bit later
            try:
                daq = _push(ctx, endpoint, daq_keys, bind=True)  # the daemon reconnects
            except zmq.ZMQError as exc:
                assert exc.errno == zmq.EADDRINUSE
                time.sleep(0.05)
        n_good = 1000
        for frames in _daq_batches(ev, n_good, 200):
            daq.send_multipart(frames, copy=False)
        wait_for(lambda: pipe.status()["events_processed"] == n_good, what="the good events")
        status = pipe.status()
        assert status["state"] == "running" and status["error"] is None
        summary = pipe.stop()
    finally:
        if daq is not None:
            daq.close(0)
        for c in (ctx, impostor_ctx):
            security.stop_authenticator(c)
            c.destroy(linger=0)
    assert summary.n_processed == summary.n_events_in == n_good
    assert_run_matches_emulator(summary, pipe, events_h5, models, n_good)


@pytest.mark.parametrize("bind", [False, True])
def test_a_zmq_source_off_loopback_needs_curve_keys(tmp_path, run_cfg, bind):
    endpoint = "tcp://192.0.2.7:5555"  # TEST-NET-1: never reached
    with pytest.raises(ConfigError, match=r"source\.curve_keys: required for a zmq source"):
        run_cfg(source={"kind": "zmq", "endpoint": endpoint, "bind": bind, "loop": False})
    with pytest.raises(security.SecurityError, match="without CURVE keys"):
        ZmqInputSource(endpoint, bind=bind)
    keys = security.generate_keys(tmp_path / "keys")
    cfg = run_cfg(
        source={"kind": "zmq", "endpoint": endpoint, "bind": False, "loop": False},
        network={"curve_keys": str(keys.folder)},
    )
    assert cfg.source.curve_keys is None  # the network keys serve the source too


def test_a_connecting_curve_source_retries_once_the_daq_authorizes_its_key(
    tmp_path, events_h5, models, run_cfg, running_pipeline
):
    """The DAQ first refuses the daemon's client key (ZeroMQ then stops retrying by itself);
    once the DAQ authorizes it, the source's own retry gets the events through."""
    daq_keys = security.generate_keys(tmp_path / "daq")
    shutil.move(daq_keys.authorized_dir / "client.key", tmp_path / "client.key")
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    cfg = run_cfg(
        source={
            "kind": "zmq",
            "endpoint": endpoint,
            "loop": False,
            "curve_keys": str(daq_keys.folder),
        }
    )
    ev = read_events(events_h5)
    ctx = zmq.Context()
    daq = _push(ctx, endpoint, daq_keys, bind=True)
    try:
        pipe = running_pipeline(cfg, 23)
        wait_for(lambda: pipe.status()["source_refused"] >= 1, what="the refused handshake")
        assert pipe.status()["events_in"] == 0
        shutil.move(tmp_path / "client.key", daq_keys.authorized_dir / "client.key")
        security.authenticator(ctx, daq_keys).configure_curve(
            domain="*", location=str(daq_keys.authorized_dir)
        )
        n_good = 600
        for frames in _daq_batches(ev, n_good, 200):
            daq.send_multipart(frames, copy=False)
        wait_for(lambda: pipe.status()["events_processed"] == n_good, what="the good events")
        summary = pipe.stop()
    finally:
        daq.close(0)
        security.stop_authenticator(ctx)
        ctx.term()
    assert summary.n_processed == summary.n_events_in == n_good
    assert_run_matches_emulator(summary, pipe, events_h5, models, n_good)
