"""The online wire format: a versioned fixed binary header, then the raw arrays of a batch.

A message is a list of frames (ZeroMQ multipart): frame 0 is the fixed little-endian header,
then one frame per array, each the raw bytes of a C-contiguous little-endian array (sent
without copying). Events (kind 1): ``[header, event uint64 (N,), objects_hw int16|int32
(N, 19, 3)]``. Results (kind 2): ``[header, event, scores float64 (N, M), seed_bits uint32
(N,), accepted_index uint32 (A,), objects_hw int16|int32 (A, 19, 3)]``. Treat the list as
opaque: pass every frame of ``encode_*`` to ``decode_*``.

Header (112 bytes, little endian, struct ``<4sHBBQQQIBBH3IId32sQII``): magic ``L1FW``, version
u16, kind u8, flags u8 (0), run u64, first_seq u64, lumisection u64, count u32 (events N),
objects dtype code u8 (1 int16, 2 int32), ndim u8 (3), n_models u16, objects shape 3 x u32,
n_accepted u32, latency_s f64, worker 32 bytes, payload bytes u64, CRC-32 of the payload frames
(zlib, chained in order) u32, CRC-32 of the header's preceding 108 bytes u32.

Decoding checks magic, version, kind, sizes, dtypes, shapes, the CRC-32 of the header and of the
payload, finite scores and the hardware ranges before building any array, and raises
``WireError`` with a short machine ``reason`` (one of ``REASONS``) for per-reason counters.
Decoded arrays are read-only views on the received frames (``np.frombuffer``). No pickle.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from l1forge.errors import DataFormatError
from l1forge.sim.l1objects import (
    ETA_MAX_HW,
    ETA_MIN_HW,
    N_FEATURES,
    N_OBJECTS,
    PHI_MAX_HW,
    PHI_MIN_HW,
    PT_MAX_HW,
)

MAGIC = b"L1FW"
WIRE_VERSION = 1
MAX_EVENTS_PER_MESSAGE = 1 << 20
# Topics of the monitoring tap (PUB): sampled batches with every event, zero-bias events.
TOPIC_MONITOR = b"mon"
TOPIC_ZERO_BIAS = b"zb"
MAX_MODELS = 64
WORKER_BYTES = 32  # the worker name field (utf-8, zero padded)
KIND_EVENTS = 1
KIND_RESULTS = 2
REASONS = (
    "magic",
    "version",
    "kind",
    "truncated",
    "size",
    "count",
    "dtype",
    "shape",
    "checksum",
    "nonfinite",
    "range",
    "header",
)

# dtype codes of the objects array (the only array whose dtype varies)
DTYPE_CODES: dict[int, np.dtype] = {1: np.dtype("<i2"), 2: np.dtype("<i4")}
_CODE_OF = {v: k for k, v in DTYPE_CODES.items()}

# magic, version, kind, flags, run, first_seq, lumisection, count, dtype, ndim, n_models,
# shape[3], n_accepted, latency_s, worker, payload_bytes, payload_crc32, header_crc32
_HEADER = struct.Struct("<4sHBBQQQIBBH3IId32sQII")
HEADER_SIZE = _HEADER.size
_FIRST_SEQ_OFFSET = struct.calcsize("<4sHBBQ")  # after magic, version, kind, flags, run
_HW_LO = np.array([0, ETA_MIN_HW, PHI_MIN_HW], dtype=np.int32)
_HW_HI = np.array([PT_MAX_HW, ETA_MAX_HW, PHI_MAX_HW], dtype=np.int32)
# the same bounds for each of an event's 19 x 3 values, in memory order
_ROW_LO, _ROW_HI = np.tile(_HW_LO, N_OBJECTS), np.tile(_HW_HI, N_OBJECTS)
_FEATURES = ("pT", "eta", "phi")
_U64 = np.dtype("<u8")
_U32 = np.dtype("<u4")
_F64 = np.dtype("<f8")


class WireError(DataFormatError):
    """A message that fails validation; ``reason`` is a short machine key from ``REASONS``."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"wire message rejected ({reason}): {message}")
        self.reason = reason


def _check_objects(objects_hw: np.ndarray, n: int, what: str) -> None:
    if objects_hw.dtype.kind != "i" or objects_hw.dtype.itemsize not in (2, 4):
        raise DataFormatError(f"{what}: objects_hw must be int16 or int32, got {objects_hw.dtype}")
    if objects_hw.shape != (n, N_OBJECTS, N_FEATURES):
        raise DataFormatError(
            f"{what}: objects_hw must have shape ({n}, {N_OBJECTS}, {N_FEATURES}), "
            f"got {objects_hw.shape}"
        )


def _check_vector(a: np.ndarray, n: int, kind: str, name: str, what: str) -> None:
    if a.dtype.kind != kind or a.shape != (n,):
        raise DataFormatError(f"{what}: {name} must be a ({n},) array of kind {kind!r}")


@dataclass(frozen=True)
class EventBatch:
    """``N`` consecutive events of one run: sequence numbers ``first_seq .. first_seq + N - 1``."""

    run: int
    first_seq: int
    lumisection: int
    event: np.ndarray  # uint64 (N,) generator/dataset event numbers
    objects_hw: np.ndarray  # int16 or int32 (N, 19, 3) hardware units

    def __post_init__(self) -> None:
        n = len(self.event)
        _check_vector(self.event, n, "u", "event", "EventBatch")
        _check_objects(self.objects_hw, n, "EventBatch")
        _check_ids(self.run, self.first_seq, self.lumisection, n, "EventBatch")

    def __len__(self) -> int:
        return len(self.event)

    def seqs(self) -> np.ndarray:
        """Sequence numbers of the events, uint64 (N,)."""
        return np.arange(len(self), dtype=np.uint64) + np.uint64(self.first_seq)


@dataclass(frozen=True)
class ResultBatch:
    """The trigger results of one EventBatch; objects only of the events in ``accepted_index``."""

    run: int
    first_seq: int
    lumisection: int
    event: np.ndarray  # uint64 (N,)
    scores: np.ndarray  # float64 (N, n_models) real network outputs
    seed_bits: np.ndarray  # uint32 (N,) bit i = menu seed i fired (after prescale)
    objects_hw: np.ndarray  # int16|int32 (A, 19, 3) the events at accepted_index
    accepted_index: np.ndarray  # uint32 (A,) increasing positions in the batch
    latency_s: float  # backend time for this batch
    worker: str

    def __post_init__(self) -> None:
        n = len(self.event)
        _check_vector(self.event, n, "u", "event", "ResultBatch")
        _check_vector(self.seed_bits, n, "u", "seed_bits", "ResultBatch")
        if self.scores.dtype.kind != "f" or self.scores.ndim != 2 or len(self.scores) != n:
            raise DataFormatError(f"ResultBatch: scores must be float (N={n}, n_models)")
        if self.scores.shape[1] > MAX_MODELS:
            raise DataFormatError(f"ResultBatch: at most {MAX_MODELS} models")
        a = len(self.accepted_index)
        _check_vector(self.accepted_index, a, "u", "accepted_index", "ResultBatch")
        _check_objects(self.objects_hw, a, "ResultBatch")
        _check_ids(self.run, self.first_seq, self.lumisection, n, "ResultBatch")
        if len(self.worker.encode()) > WORKER_BYTES:
            raise DataFormatError(f"ResultBatch: worker name longer than {WORKER_BYTES} bytes")

    def __len__(self) -> int:
        return len(self.event)

    def seqs(self) -> np.ndarray:
        """Sequence numbers of the events, uint64 (N,)."""
        return np.arange(len(self), dtype=np.uint64) + np.uint64(self.first_seq)


def _check_ids(run: int, first_seq: int, lumisection: int, n: int, what: str) -> None:
    for name, v in (("run", run), ("first_seq", first_seq), ("lumisection", lumisection)):
        if not isinstance(v, int | np.integer) or not 0 <= int(v) < 1 << 64:
            raise DataFormatError(f"{what}: {name} must be an integer in [0, 2**64), got {v!r}")
    if int(first_seq) + n > 1 << 64:
        raise DataFormatError(f"{what}: first_seq + N overflows uint64")
    if n > MAX_EVENTS_PER_MESSAGE:
        raise DataFormatError(f"{what}: {n} events exceed MAX_EVENTS_PER_MESSAGE")


def _raw(a: np.ndarray, dtype: np.dtype) -> memoryview:
    """The bytes of ``a`` as ``dtype`` (little endian), without a copy when already so."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a.reshape(-1).view(np.uint8).data


def _pack_header(
    kind: int,
    run: int,
    first_seq: int,
    lumisection: int,
    count: int,
    objects: np.ndarray,
    n_models: int,
    latency_s: float,
    worker: str,
    payload: Sequence[memoryview],
) -> bytes:
    crc = 0
    for p in payload:
        crc = zlib.crc32(p, crc)
    fields = [
        MAGIC,
        WIRE_VERSION,
        kind,
        0,
        int(run),
        int(first_seq),
        int(lumisection),
        count,
        _CODE_OF[objects.dtype.newbyteorder("<")],
        3,
        n_models,
        *objects.shape,
        len(objects),
        float(latency_s),
        worker.encode(),
        sum(p.nbytes for p in payload),
        crc,
    ]
    body = _HEADER.pack(*fields, 0)
    return _HEADER.pack(*fields, zlib.crc32(body[:-4]))


def encode_batch(batch: EventBatch) -> list[bytes | memoryview]:
    """Frames of an EventBatch: ``[header, event, objects_hw]``, payload frames zero-copy."""
    obj_dtype = batch.objects_hw.dtype.newbyteorder("<")
    payload = [_raw(batch.event, _U64), _raw(batch.objects_hw, obj_dtype)]
    header = _pack_header(
        KIND_EVENTS,
        batch.run,
        batch.first_seq,
        batch.lumisection,
        len(batch),
        batch.objects_hw,
        0,
        0.0,
        "",
        payload,
    )
    return [header, *payload]


def encode_results(r: ResultBatch) -> list[bytes | memoryview]:
    """Frames of a ResultBatch: ``[header, event, scores, seed_bits, accepted_index, objects]``."""
    obj_dtype = r.objects_hw.dtype.newbyteorder("<")
    payload = [
        _raw(r.event, _U64),
        _raw(r.scores, _F64),
        _raw(r.seed_bits, _U32),
        _raw(r.accepted_index, _U32),
        _raw(r.objects_hw, obj_dtype),
    ]
    header = _pack_header(
        KIND_RESULTS,
        r.run,
        r.first_seq,
        r.lumisection,
        len(r),
        r.objects_hw,
        r.scores.shape[1],
        r.latency_s,
        r.worker,
        payload,
    )
    return [header, *payload]


@dataclass(frozen=True)
class _Header:
    kind: int
    run: int
    first_seq: int
    lumisection: int
    count: int
    dtype: np.dtype
    shape: tuple[int, int, int]
    n_models: int
    n_accepted: int
    latency_s: float
    worker: str
    payload_bytes: int
    payload_crc: int


def _buffer(frame: Any) -> memoryview:
    """A flat byte view of a frame (bytes, memoryview, numpy array or zmq.Frame)."""
    frame = getattr(frame, "buffer", frame)  # zmq.Frame exposes its bytes as .buffer
    try:
        view = memoryview(frame)
        if view.format == "B" and view.ndim == 1:
            return view
        return view.cast("B") if view.nbytes else memoryview(b"")
    except TypeError as exc:
        raise WireError("header", f"a frame is not a contiguous byte buffer: {exc}") from exc


def peek_first_seq(frame: Any) -> int:
    """The ``first_seq`` field of a header frame, unvalidated: names a batch in the error report
    when the message itself is rejected (a short frame gives what bytes it has)."""
    buf = _buffer(frame)
    return int.from_bytes(bytes(buf[_FIRST_SEQ_OFFSET : _FIRST_SEQ_OFFSET + 8]), "little")


def _parse_header(frame: Any, kind: int) -> _Header:
    buf = _buffer(frame)
    if len(buf) < 6:
        if bytes(buf[:4]) != MAGIC[: len(buf[:4])]:
            raise WireError("magic", f"expected magic {MAGIC!r}")
        raise WireError("truncated", f"header of {len(buf)} bytes, need {HEADER_SIZE}")
    if bytes(buf[:4]) != MAGIC:
        raise WireError("magic", f"expected magic {MAGIC!r}")
    (version,) = struct.unpack_from("<H", buf, 4)
    if version != WIRE_VERSION:
        raise WireError("version", f"wire version {version}, this reader speaks {WIRE_VERSION}")
    if len(buf) < HEADER_SIZE:
        raise WireError("truncated", f"header of {len(buf)} bytes, need {HEADER_SIZE}")
    if len(buf) > HEADER_SIZE:
        raise WireError("size", f"header of {len(buf)} bytes, expected {HEADER_SIZE}")
    f = _HEADER.unpack(buf)
    if zlib.crc32(buf[: HEADER_SIZE - 4]) != f[-1]:
        raise WireError("checksum", "header CRC-32 mismatch")
    (_, _, k, flags, run, first_seq, ls, count, code, ndim, n_models) = f[:11]
    shape = tuple(f[11:14])
    n_acc, latency, worker_raw, payload_bytes, payload_crc = f[14:19]
    if k != kind:
        raise WireError("kind", f"message kind {k}, expected {kind}")
    if flags != 0:
        raise WireError("header", f"unknown flags {flags:#x}")
    if count > MAX_EVENTS_PER_MESSAGE:
        raise WireError("count", f"{count} events exceed the limit {MAX_EVENTS_PER_MESSAGE}")
    if first_seq + count > 1 << 64:
        raise WireError("range", "first_seq + count overflows uint64")
    if code not in DTYPE_CODES:
        raise WireError("dtype", f"unknown objects dtype code {code}")
    if ndim != 3 or shape[1:] != (N_OBJECTS, N_FEATURES):
        raise WireError("shape", f"objects shape {shape[:ndim]}, expected (n, 19, 3)")
    if n_acc != shape[0]:
        raise WireError("shape", "accepted count differs from the objects shape")
    if kind == KIND_EVENTS and (shape[0] != count or n_models != 0 or n_acc != count):
        raise WireError("shape", f"objects shape {shape}, expected ({count}, 19, 3)")
    if kind == KIND_RESULTS and (n_acc > count or n_models > MAX_MODELS):
        raise WireError("shape", f"{n_acc} accepted of {count}, {n_models} models")
    if not np.isfinite(latency):
        raise WireError("nonfinite", "latency is not finite")
    if latency < 0:
        raise WireError("range", "negative latency")
    try:
        worker = worker_raw.rstrip(b"\0").decode()
    except UnicodeDecodeError as exc:
        raise WireError("header", "worker name is not utf-8") from exc
    return _Header(
        k,
        run,
        first_seq,
        ls,
        count,
        DTYPE_CODES[code],
        shape,
        n_models,
        n_acc,
        latency,
        worker,
        payload_bytes,
        payload_crc,
    )


def _payload(frames: Sequence[Any], sizes: list[int], h: _Header) -> list[memoryview]:
    """The payload frames as byte views, after checking their number, sizes and CRC."""
    if len(frames) - 1 < len(sizes):
        raise WireError("truncated", f"{len(frames)} frames, expected {len(sizes) + 1}")
    if len(frames) - 1 > len(sizes):
        raise WireError("size", f"{len(frames)} frames, expected {len(sizes) + 1}")
    views = [_buffer(fr) for fr in frames[1:]]
    for v, size in zip(views, sizes, strict=True):
        if len(v) < size:
            raise WireError("truncated", f"payload frame of {len(v)} bytes, expected {size}")
        if len(v) > size:
            raise WireError("size", f"payload frame of {len(v)} bytes, expected {size}")
    if sum(sizes) != h.payload_bytes:
        raise WireError("size", f"header declares {h.payload_bytes} payload bytes")
    crc = 0
    for v in views:
        crc = zlib.crc32(v, crc)
    if crc != h.payload_crc:
        raise WireError("checksum", "payload CRC-32 mismatch")
    return views


def _objects(view: memoryview, h: _Header) -> np.ndarray:
    obj = np.frombuffer(view, dtype=h.dtype).reshape(h.shape)
    if obj.size:
        # column minima and maxima of the (N, 57) rows: contiguous, vectorized reductions
        rows = obj.reshape(len(obj), -1)
        bad = (rows.min(axis=0) < _ROW_LO) | (rows.max(axis=0) > _ROW_HI)
        if bad.any():
            name = _FEATURES[int(np.flatnonzero(bad)[0]) % N_FEATURES]
            raise WireError("range", f"{name} outside its hardware range")
    return obj


def decode_batch(frames: Sequence[Any]) -> EventBatch:
    """An EventBatch from its frames; raises WireError (with ``reason``) on any defect."""
    if len(frames) == 0:
        raise WireError("truncated", "no frames")
    h = _parse_header(frames[0], KIND_EVENTS)
    n = h.count
    views = _payload(frames, [8 * n, n * N_OBJECTS * N_FEATURES * h.dtype.itemsize], h)
    event = np.frombuffer(views[0], dtype=_U64)
    return EventBatch(h.run, h.first_seq, h.lumisection, event, _objects(views[1], h))


def decode_results(frames: Sequence[Any]) -> ResultBatch:
    """A ResultBatch from its frames; raises WireError (with ``reason``) on any defect."""
    if len(frames) == 0:
        raise WireError("truncated", "no frames")
    h = _parse_header(frames[0], KIND_RESULTS)
    n, m, a = h.count, h.n_models, h.n_accepted
    obj_bytes = a * N_OBJECTS * N_FEATURES * h.dtype.itemsize
    views = _payload(frames, [8 * n, 8 * n * m, 4 * n, 4 * a, obj_bytes], h)
    scores = np.frombuffer(views[1], dtype=_F64).reshape(n, m)
    if not np.isfinite(scores).all():
        raise WireError("nonfinite", "scores contain NaN or infinity")
    index = np.frombuffer(views[3], dtype=_U32)
    if a and (index[-1] >= n or (a > 1 and (np.diff(index.astype(np.int64)) <= 0).any())):
        raise WireError("range", "accepted_index must be increasing positions in the batch")
    return ResultBatch(
        h.run,
        h.first_seq,
        h.lumisection,
        np.frombuffer(views[0], dtype=_U64),
        scores,
        np.frombuffer(views[2], dtype=_U32),
        _objects(views[4], h),
        index,
        h.latency_s,
        h.worker,
    )
