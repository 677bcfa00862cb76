"""The wire format: round trips, the documented header layout, and every defect rejected."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from l1forge.errors import DataFormatError
from l1forge.online.datapath import wire
from l1forge.online.datapath.wire import (
    HEADER_SIZE,
    MAGIC,
    MAX_EVENTS_PER_MESSAGE,
    REASONS,
    WIRE_VERSION,
    EventBatch,
    ResultBatch,
    WireError,
    decode_batch,
    decode_results,
    encode_batch,
    encode_results,
)

# The layout documented in wire.py, written out independently so a change to it fails here.
LAYOUT = struct.Struct("<4sHBBQQQIBBH3IId32sQII")
FIELDS = (
    "magic version kind flags run first_seq lumisection count dtype ndim n_models "
    "s0 s1 s2 n_accepted latency_s worker payload_bytes payload_crc header_crc"
).split()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hw_objects(rng: np.random.Generator, n: int, dtype=np.int16) -> np.ndarray:
    obj = np.empty((n, 19, 3), dtype=dtype)
    obj[..., 0] = rng.integers(0, 4096, (n, 19))
    obj[..., 1] = rng.integers(-128, 128, (n, 19))
    obj[..., 2] = rng.integers(-72, 72, (n, 19))
    return obj


def event_batch(n: int = 5, seed: int = 0, dtype=np.int16, run: int = 7) -> EventBatch:
    rng = np.random.default_rng(seed)
    event = rng.integers(0, 2**63, n, dtype=np.uint64)
    return EventBatch(run, 1000 + seed, 3, event, hw_objects(rng, n, dtype))


def result_batch(n: int = 6, m: int = 2, seed: int = 0) -> ResultBatch:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 4, n).astype(np.uint32)
    acc = np.flatnonzero(bits).astype(np.uint32)
    return ResultBatch(
        run=9,
        first_seq=4096,
        lumisection=1,
        event=np.arange(n, dtype=np.uint64) + 11,
        scores=rng.normal(size=(n, m)),
        seed_bits=bits,
        objects_hw=hw_objects(rng, len(acc), np.int32),
        accepted_index=acc,
        latency_s=0.0125,
        worker="worker-3",
    )


def as_bytes(frames) -> list[bytes]:
    return [bytes(f) for f in frames]


def reheader(header: bytes, fix_crc: bool = True, **changes) -> bytes:
    """The header with some fields changed and (by default) its CRC recomputed."""
    values = dict(zip(FIELDS, LAYOUT.unpack(header), strict=True))
    values.update(changes)
    packed = LAYOUT.pack(*(values[f] for f in FIELDS))
    if fix_crc:
        packed = packed[:-4] + struct.pack("<I", zlib.crc32(packed[:-4]))
    return packed


def repayload(frames: list[bytes], index: int, data: bytes) -> list[bytes]:
    """Replace payload frame ``index`` and fix the sizes and CRC so only the content is wrong."""
    out = list(frames)
    out[index] = data
    crc = 0
    for f in out[1:]:
        crc = zlib.crc32(f, crc)
    out[0] = reheader(out[0], payload_bytes=sum(len(f) for f in out[1:]), payload_crc=crc)
    return out


def rejected(reason: str, fn, frames) -> WireError:
    with pytest.raises(WireError) as info:
        fn(frames)
    assert info.value.reason == reason, str(info.value)
    assert isinstance(info.value, DataFormatError)
    return info.value


def assert_same_events(a: EventBatch, b: EventBatch) -> None:
    assert (a.run, a.first_seq, a.lumisection) == (b.run, b.first_seq, b.lumisection)
    assert_array_equal(a.event, b.event)
    assert_array_equal(a.objects_hw, b.objects_hw)
    assert a.objects_hw.dtype == b.objects_hw.dtype


# --- round trips -------------------------------------------------------------------------------


@FUZZ
@given(
    n=st.integers(0, 40),
    seed=st.integers(0, 2**32 - 1),
    wide=st.booleans(),
    run=st.integers(0, 2**64 - 1),
    first_seq=st.integers(0, 2**64 - 41),
    ls=st.integers(0, 2**64 - 1),
)
def test_event_round_trip(n, seed, wide, run, first_seq, ls):
    b = event_batch(n, seed % 1000, np.int32 if wide else np.int16)
    b = EventBatch(run, first_seq, ls, b.event, b.objects_hw)
    frames = encode_batch(b)
    assert len(frames[0]) == HEADER_SIZE == LAYOUT.size
    out = decode_batch(as_bytes(frames))
    assert_same_events(out, b)
    assert_array_equal(out.seqs(), np.uint64(first_seq) + np.arange(n, dtype=np.uint64))


@FUZZ
@given(n=st.integers(0, 30), m=st.integers(0, 5), seed=st.integers(0, 1000))
def test_result_round_trip(n, m, seed):
    r = result_batch(n, m, seed)
    out = decode_results(as_bytes(encode_results(r)))
    for name in ("run", "first_seq", "lumisection", "latency_s", "worker"):
        assert getattr(out, name) == getattr(r, name)
    for name in ("event", "scores", "seed_bits", "objects_hw", "accepted_index"):
        assert_array_equal(getattr(out, name), getattr(r, name))


def test_header_layout_is_the_documented_one():
    b = event_batch(4, dtype=np.int32)
    frames = encode_batch(b)
    v = dict(zip(FIELDS, LAYOUT.unpack(frames[0]), strict=True))
    assert v["magic"] == MAGIC and v["version"] == WIRE_VERSION == 1 and v["kind"] == 1
    assert (v["run"], v["first_seq"], v["lumisection"], v["count"]) == (7, 1000, 3, 4)
    assert (v["dtype"], v["ndim"], v["s0"], v["s1"], v["s2"]) == (2, 3, 4, 19, 3)
    payload = b.event.tobytes() + b.objects_hw.tobytes()
    assert v["payload_bytes"] == len(payload)
    assert v["payload_crc"] == zlib.crc32(payload)
    assert v["header_crc"] == zlib.crc32(frames[0][:-4])


def test_first_seq_can_be_read_from_a_rejected_header():
    """What the worker reports as the batch of a message it cannot decode."""
    b = event_batch(4, dtype=np.int16)
    header = bytearray(encode_batch(b)[0])
    header[0] ^= 0xFF  # bad magic: decoding refuses it, the sequence number is still named
    with pytest.raises(WireError):
        decode_batch([bytes(header), *encode_batch(b)[1:]])
    assert wire.peek_first_seq(bytes(header)) == b.first_seq == 1000
    assert wire.peek_first_seq(zmq.Frame(bytes(header))) == 1000


def test_encode_does_not_copy_the_payload():
    b = event_batch(100)
    frames = encode_batch(b)
    # the payload frames are views on the batch's own memory
    assert np.shares_memory(np.frombuffer(frames[2], np.int16), b.objects_hw)
    assert np.shares_memory(np.frombuffer(frames[1], np.uint64), b.event)
    out = decode_batch(frames)
    assert np.shares_memory(out.objects_hw, b.objects_hw)


def test_round_trip_through_zeromq_frames():
    """Zero-copy send and receive: decode reads zmq.Frame objects directly."""
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.setsockopt(zmq.LINGER, 0)
        b.setsockopt(zmq.LINGER, 0)
        port = b.bind_to_random_port("tcp://127.0.0.1")
        a.connect(f"tcp://127.0.0.1:{port}")
        batch = event_batch(3000, seed=4)
        a.send_multipart(encode_batch(batch), copy=False)
        assert b.poll(10_000), "no message within 10 s"
        frames = b.recv_multipart(copy=False)
        assert all(isinstance(f, zmq.Frame) for f in frames)
        assert_same_events(decode_batch(frames), batch)
        r = result_batch(50)
        a.send_multipart([b"mon", *encode_results(r)], copy=False)
        assert b.poll(10_000)
        topic, *rest = b.recv_multipart(copy=False)
        assert topic.bytes == b"mon"
        assert_array_equal(decode_results(rest).scores, r.scores)
    finally:
        a.close(linger=0)
        b.close(linger=0)


def test_batch_constructors_reject_bad_arrays():
    rng = np.random.default_rng(0)
    with pytest.raises(DataFormatError, match="objects_hw"):
        EventBatch(1, 0, 0, np.zeros(2, np.uint64), np.zeros((2, 19, 3), np.float32))
    with pytest.raises(DataFormatError, match="objects_hw"):
        EventBatch(1, 0, 0, np.zeros(2, np.uint64), hw_objects(rng, 3))
    with pytest.raises(DataFormatError, match="first_seq"):
        EventBatch(1, 2**64 - 1, 0, np.zeros(2, np.uint64), hw_objects(rng, 2))
    with pytest.raises(DataFormatError, match="worker"):
        r = result_batch(2)
        ResultBatch(**{**r.__dict__, "worker": "w" * 33})


# --- every defect is a WireError with its reason ----------------------------------------------


@pytest.fixture(scope="module")
def good() -> list[bytes]:
    return as_bytes(encode_batch(event_batch(8)))


@pytest.fixture(scope="module")
def good_results() -> list[bytes]:
    return as_bytes(encode_results(result_batch(8, 2)))


def test_reasons_are_the_documented_set():
    assert set(REASONS) == {
        *"magic version kind truncated size count dtype shape checksum nonfinite range".split(),
        "header",
    }


def test_header_defects(good):
    h, *payload = good
    rejected("magic", decode_batch, [b"XXXX" + h[4:], *payload])
    rejected("version", decode_batch, [reheader(h, version=2), *payload])
    rejected("version", decode_batch, [reheader(h, version=0, fix_crc=False)[:20], *payload])
    rejected("kind", decode_batch, [reheader(h, kind=2), *payload])
    rejected("kind", decode_results, good)
    rejected("header", decode_batch, [reheader(h, flags=1), *payload])
    rejected("checksum", decode_batch, [reheader(h, run=8, fix_crc=False), *payload])
    rejected("size", decode_batch, [h + b"\0", *payload])
    rejected("truncated", decode_batch, [])
    rejected("truncated", decode_batch, [h])
    rejected("size", decode_batch, [*good, b""])
    rejected("dtype", decode_batch, [reheader(h, dtype=3), *payload])
    rejected("shape", decode_batch, [reheader(h, s1=18), *payload])
    rejected("shape", decode_batch, [reheader(h, ndim=2), *payload])
    rejected("shape", decode_batch, [reheader(h, s0=9), *payload])
    rejected("size", decode_batch, [reheader(h, payload_bytes=1), *payload])
    rejected("range", decode_batch, [reheader(h, first_seq=2**64 - 3), *payload])
    rejected("nonfinite", decode_batch, [reheader(h, latency_s=float("nan")), *payload])
    rejected("range", decode_batch, [reheader(h, latency_s=-1.0), *payload])
    rejected("header", decode_batch, [reheader(h, worker=b"\xff" * 4), *payload])
    rejected("header", decode_batch, [h, 12345, payload[1]])


def test_huge_claimed_counts_are_refused_without_allocating(good):
    h, *payload = good
    rejected("count", decode_batch, [reheader(h, count=2**32 - 1, s0=2**32 - 1), *payload])
    rejected(
        "count",
        decode_batch,
        [reheader(h, count=MAX_EVENTS_PER_MESSAGE + 1, s0=MAX_EVENTS_PER_MESSAGE + 1), *payload],
    )
    # a count within the limit but a payload that does not hold it: sizes fail, nothing allocated
    n = MAX_EVENTS_PER_MESSAGE
    forged = reheader(h, count=n, s0=n, n_accepted=n, payload_bytes=n * (8 + 114))
    tracemalloc.start()
    try:
        rejected("truncated", decode_batch, [forged, *payload])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decode allocated {peak} bytes for a forged count"


def test_payload_defects(good):
    h, ev, obj = good
    rejected("checksum", decode_batch, [h, ev, obj[:-1] + bytes([obj[-1] ^ 1])])
    rejected("truncated", decode_batch, repayload(good, 2, obj[:-2]))
    rejected("size", decode_batch, repayload(good, 2, obj + b"\0\0"))
    bad = np.frombuffer(obj, np.int16).reshape(8, 19, 3).copy()
    for col, value in ((0, 4096), (0, -1), (1, 128), (1, -129), (2, 72), (2, -73)):
        wrong = bad.copy()
        wrong[3, 5, col] = value
        err = rejected("range", decode_batch, repayload(good, 2, wrong.tobytes()))
        assert f"{('pT', 'eta', 'phi')[col]} outside" in str(err)


def test_result_defects(good_results):
    frames = good_results
    scores = np.frombuffer(frames[2], np.float64).copy()
    for value in (np.nan, np.inf, -np.inf):
        s = scores.copy()
        s[3] = value
        rejected("nonfinite", decode_results, repayload(frames, 2, s.tobytes()))
    idx = np.frombuffer(frames[4], np.uint32).copy()
    assert len(idx) >= 2
    swapped = idx.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    rejected("range", decode_results, repayload(frames, 4, swapped.tobytes()))
    beyond = idx.copy()
    beyond[-1] = 8
    rejected("range", decode_results, repayload(frames, 4, beyond.tobytes()))
    h = frames[0]
    rejected("shape", decode_results, [reheader(h, n_accepted=9, s0=9), *frames[1:]])
    rejected("shape", decode_results, [reheader(h, n_models=65), *frames[1:]])


@FUZZ
@given(data=st.binary(max_size=300), extra=st.lists(st.binary(max_size=64), max_size=6))
def test_random_bytes_only_raise_wire_error(data, extra):
    for fn in (decode_batch, decode_results):
        for head in (data, MAGIC + data, MAGIC + struct.pack("<H", WIRE_VERSION) + data):
            with pytest.raises(WireError) as info:
                fn([head, *extra])
            assert info.value.reason in REASONS


@FUZZ
@given(frame=st.integers(0, 2), bit=st.integers(0, 10**9))
def test_every_single_bit_flip_is_detected(good, frame, bit):
    frames = list(good)
    buf = bytearray(frames[frame])
    pos = bit % (8 * len(buf))
    buf[pos // 8] ^= 1 << (pos % 8)
    frames[frame] = bytes(buf)
    with pytest.raises(WireError) as info:
        decode_batch(frames)
    assert info.value.reason in REASONS


def test_every_truncation_is_detected(good, good_results):
    for fn, frames in ((decode_batch, good), (decode_results, good_results)):
        for i, f in enumerate(frames):
            for cut in range(len(f)):
                with pytest.raises(WireError) as info:
                    fn([*frames[:i], f[:cut], *frames[i + 1 :]])
                assert info.value.reason in REASONS
            with pytest.raises(WireError):
                fn(frames[:i])


# fields whose change leaves a valid message (ids, latency) or that are covered elsewhere
FREE_FIELDS = "magic worker header_crc run first_seq lumisection latency_s".split()


@FUZZ
@given(
    field=st.sampled_from([f for f in FIELDS if f not in FREE_FIELDS]),
    value=st.integers(0, 255),
)
def test_forged_header_fields_only_raise_wire_error(good_results, field, value):
    h = good_results[0]
    original = dict(zip(FIELDS, LAYOUT.unpack(h), strict=True))[field]
    changed = float(value) if field == "latency_s" else value
    if changed == original:
        return
    with pytest.raises(WireError):
        decode_results([reheader(h, **{field: changed}), *good_results[1:]])


def test_nonfinite_float_payload_in_an_int_slot_is_a_range_or_dtype_error(good):
    # a float32 payload where int16 objects are declared: the bytes are reinterpreted, never
    # cast; the decoder either refuses the values (range) or the size
    h, ev, obj = good
    floats = np.full(len(obj) // 4, np.nan, np.float32).tobytes()
    rejected("range", decode_batch, repayload(good, 2, floats))
    rejected("dtype", decode_batch, [reheader(h, dtype=0), ev, obj])


def test_header_size_constant_matches_struct():
    assert wire.HEADER_SIZE == 112
