"""Event sources of the online daemon: HDF5 replay, live Pythia and a ZeroMQ input for a DAQ.

A source yields raw chunks (event numbers + hardware objects); `Sequencer` cuts them into
`EventBatch` messages carrying the daemon's contiguous sequence numbers, never across a
lumisection (lumisection = seq // events_per_lumisection).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np
import zmq

from l1forge.errors import ConfigError, DataFormatError, L1ForgeError
from l1forge.online.datapath.wire import EventBatch, WireError, decode_batch, encode_batch
from l1forge.online.security import (
    CurveKeys,
    SecurityError,
    endpoint_host,
    is_loopback,
    log_refusals,
    secure_client,
    secure_server,
    stop_authenticator,
    watch_handshakes,
)
from l1forge.sim.dataset import event_file_length
from l1forge.sim.l1objects import N_FEATURES, N_OBJECTS

log = logging.getLogger(__name__)

DEFAULT_CHUNK_EVENTS = 65536
REPLAY_CACHE_MB = 1024.0  # a looped replay keeps files up to this size in memory
IDLE_TICK_S = 0.1  # an idle source yields an empty chunk this often (lets callers flush, stop)
CURVE_RETRY_S = 1.0  # a connected CURVE source connects again this long after a refusal
DISCONNECT_FACTOR = 4  # ZeroMQ's own frame limit, in units of a zmq source's max_message_bytes
INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1


class SourceError(L1ForgeError, RuntimeError):
    """A source cannot produce events (unreadable file, generator process died)."""


@dataclass(frozen=True)
class Chunk:
    """Events as read: uint64 event numbers (N,) and int16 hardware objects (N, 19, 3)."""

    event: np.ndarray
    objects_hw: np.ndarray

    def __len__(self) -> int:
        return len(self.event)


EMPTY = Chunk(np.zeros(0, np.uint64), np.zeros((0, N_OBJECTS, N_FEATURES), np.int16))


class Source(Protocol):
    """Anything that yields chunks until exhausted or until `stop` is set."""

    kind: str

    def chunks(self, stop: threading.Event) -> Iterator[Chunk]: ...

    def rejected(self) -> dict[str, int]: ...

    def close(self) -> None: ...


def _as_int16(objects_hw: np.ndarray, where: str) -> np.ndarray:
    """Hardware objects as int16 (the wire's compact payload); values outside int16 are an error."""
    if objects_hw.dtype == np.int16:
        return objects_hw
    if len(objects_hw) and (objects_hw.min() < INT16_MIN or objects_hw.max() > INT16_MAX):
        raise DataFormatError(f"{where}: hardware objects outside the int16 range")
    return objects_hw.astype(np.int16)


class Pacer:
    """Sleeps so that no more than `rate_hz` events have been released after t seconds."""

    def __init__(self, rate_hz: float | None):
        if rate_hz is not None and not rate_hz > 0:
            raise ConfigError(f"source.rate_hz: must be positive or null, got {rate_hz!r}")
        self.rate_hz = rate_hz
        self.t0: float | None = None
        self.released = 0

    def wait(self, n: int, stop: threading.Event) -> None:
        """Block until `n` more events may go (returns early when `stop` is set)."""
        if self.rate_hz is None:
            return
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        due = self.t0 + self.released / self.rate_hz
        if due > now:
            stop.wait(due - now)
        self.released += n


class ReplaySource:
    """Replays HDF5 event files in chunks, optionally rate-limited and looped."""

    kind = "replay"

    def __init__(
        self,
        paths: tuple[str | Path, ...] | list[str | Path],
        *,
        rate_hz: float | None = None,
        loop: bool = False,
        chunk_events: int = DEFAULT_CHUNK_EVENTS,
        cache_mb: float = REPLAY_CACHE_MB,
    ):
        if not paths:
            raise ConfigError("source.paths: a replay source needs at least one HDF5 file")
        self.paths = tuple(Path(p) for p in paths)
        self.sizes = [event_file_length(p) for p in self.paths]
        if loop and sum(self.sizes) == 0:
            raise ConfigError("source.loop: the replay files hold no events to loop over")
        self.loop = loop
        self.pacer = Pacer(rate_hz)
        if rate_hz is not None:  # small chunks so the rate is smooth (about 20 releases/s)
            chunk_events = max(1, min(chunk_events, int(rate_hz / 20) or 1))
        self.chunk_events = chunk_events
        nbytes = sum(self.sizes) * N_OBJECTS * N_FEATURES * 2
        self._cache: list[Chunk] | None = [] if loop and nbytes <= cache_mb * 1e6 else None

    def _read(self, path: Path, n: int) -> Iterator[Chunk]:
        try:
            with h5py.File(path, "r") as f:
                ev, obj = f["event"], f["objects_hw"]
                for s in range(0, n, self.chunk_events):
                    e = min(n, s + self.chunk_events)
                    yield Chunk(
                        np.asarray(ev[s:e], dtype=np.uint64),
                        _as_int16(obj[s:e], str(path)),
                    )
        except OSError as exc:
            raise SourceError(f"{path}: read failed during replay: {exc}") from exc

    def _one_pass(self) -> Iterator[Chunk]:
        if self._cache:
            yield from self._cache
            return
        for path, n in zip(self.paths, self.sizes, strict=True):
            for chunk in self._read(path, n):
                if self._cache is not None:
                    self._cache.append(chunk)
                yield chunk

    def chunks(self, stop: threading.Event) -> Iterator[Chunk]:
        while not stop.is_set():
            for chunk in self._one_pass():
                self.pacer.wait(len(chunk), stop)
                if stop.is_set():
                    return
                yield chunk
            if not self.loop:
                return

    def rejected(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self._cache = None


class ZmqInputSource:
    """A PULL socket receiving wire-format EventBatch messages from an external DAQ.

    Malformed or hostile messages are rejected and counted by reason; nothing stops the source.
    A message over `max_message_bytes` is received, counted as ``oversize`` and dropped, and its
    sender stays connected; only a frame over `DISCONNECT_FACTOR` times that limit makes ZeroMQ
    itself drop the sender (it would otherwise allocate whatever a forged length announces).
    The DAQ's run and sequence numbers are replaced by the daemon's.

    With `curve_keys` (a key folder, `online.security`) the link is CURVE: bound, the source is
    a CURVE server that admits only the senders whose public keys are in the folder's
    ``authorized_clients`` (others are refused at the handshake and deliver nothing; the
    refusals are counted in `refused`); connected, it is a CURVE client that talks only to
    the DAQ holding the secret of the folder's ``server.key`` (the DAQ's public key). Without
    keys a non-loopback endpoint is refused.
    """

    kind = "zmq"

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = True,
        ctx: zmq.Context | None = None,
        rcvhwm: int = 64,
        max_message_bytes: int = 256 << 20,
        curve_keys: str | Path | CurveKeys | None = None,
    ):
        host = endpoint_host(endpoint)
        if curve_keys is None and host is not None and not is_loopback(host):
            raise SecurityError(
                f"refusing to {'bind' if bind else 'connect'} the zmq source to {endpoint} "
                "without CURVE keys: a non-loopback endpoint needs source.curve_keys or "
                "network.curve_keys (make them with `l1forge online keys --out DIR`)"
            )
        # a bound CURVE source has a context of its own: its authenticator admits the keys of
        # its own folder (ZeroMQ allows one authenticator per context)
        self._own_ctx = bind and curve_keys is not None
        self.ctx = zmq.Context() if self._own_ctx else (ctx or zmq.Context.instance())
        self.sock = self.ctx.socket(zmq.PULL)
        self._monitor: zmq.Socket | None = None
        self._bind = bind
        self._retry_at: float | None = None  # when to connect again after a refused handshake
        self.refused = 0
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        if max_message_bytes < 1:
            raise ConfigError(f"max_message_bytes: must be >= 1, got {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        self.sock.setsockopt(zmq.MAXMSGSIZE, DISCONNECT_FACTOR * max_message_bytes)
        try:
            if curve_keys is not None:
                self._monitor = watch_handshakes(self.sock)
                if bind:
                    secure_server(self.sock, curve_keys)
                else:
                    secure_client(self.sock, curve_keys)
            if bind:
                self.sock.bind(endpoint)
            else:
                self.sock.connect(endpoint)
        except (zmq.ZMQError, SecurityError) as exc:
            self.close()
            if isinstance(exc, SecurityError):
                raise
            raise ConfigError(f"source.endpoint: cannot use {endpoint!r}: {exc}") from exc
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind else endpoint
        self._lock = threading.Lock()
        self._rejected: dict[str, int] = {}
        self.n_messages = 0

    def _reject(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1

    def decode(self, frames: list) -> Chunk | None:
        """One message as a chunk, or None (counted by reason) when it fails validation."""
        try:
            batch = decode_batch(frames)
            return Chunk(
                np.asarray(batch.event, dtype=np.uint64), _as_int16(batch.objects_hw, "zmq input")
            )
        except WireError as exc:
            self._reject(exc.reason)
        except DataFormatError:
            self._reject("range")
        return None

    def chunks(self, stop: threading.Event) -> Iterator[Chunk]:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not stop.is_set():
            self._count_refusals()
            if not poller.poll(int(IDLE_TICK_S * 1000)):
                yield EMPTY
                continue
            frames = self.sock.recv_multipart(copy=False)
            self.n_messages += 1
            size = sum(len(f) for f in frames)
            if size > self.max_message_bytes:
                self._reject("oversize")  # counted like every rejection (no log flood)
                log.debug(
                    "zmq input: a %d-byte message is over the %d-byte limit; rejected",
                    size,
                    self.max_message_bytes,
                )
                continue
            chunk = self.decode(frames)
            if chunk is not None and len(chunk):
                yield chunk

    def _count_refusals(self) -> None:
        """Log and count the senders (or DAQ) refused at the CURVE handshake so far.

        Connected, the source connects again a while after a failed handshake: ZeroMQ gives
        up on an endpoint whose server refused our key, and the DAQ may authorize it later.
        """
        if self._monitor is None:
            return
        n = log_refusals(self._monitor, f"zmq source {self.endpoint}")
        self.refused += n
        now = time.monotonic()
        if n and not self._bind and self._retry_at is None:
            self._retry_at = now + CURVE_RETRY_S
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            try:
                self.sock.disconnect(self.endpoint)
            except zmq.ZMQError:
                pass  # ZeroMQ already dropped it
            self.sock.connect(self.endpoint)

    def rejected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejected)

    def close(self) -> None:
        if self._monitor is not None:
            self.sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        self.sock.close(0)
        if self._own_ctx:
            stop_authenticator(self.ctx)
            self.ctx.term()
            self._own_ctx = False


class PythiaSource:
    """Live Pythia events: a background process generates shards and streams them over ipc."""

    kind = "pythia"

    def __init__(
        self,
        processes: tuple[str, ...],
        *,
        pileup: float,
        seed: int,
        shard_events: int = 100,
        ctx: zmq.Context | None = None,
    ):
        self._dir = tempfile.mkdtemp(prefix="l1f-py-")
        self.input = ZmqInputSource(f"ipc://{self._dir}/events", ctx=ctx, rcvhwm=4)
        cmd = [sys.executable, "-m", "l1forge.online.datapath.sources", "pythia"]
        cmd += ["--push", self.input.endpoint, "--pileup", str(pileup), "--seed", str(seed)]
        cmd += ["--shard-events", str(shard_events), "--parent-pid", str(os.getpid())]
        for p in processes:
            cmd += ["--process", p]
        # its own process group: a terminal's Ctrl-C reaches the daemon, which stops it in order
        self.proc = subprocess.Popen(cmd, process_group=0)  # stopped by close()
        log.info("pythia generator started (pid %d): %s", self.proc.pid, ", ".join(processes))

    def chunks(self, stop: threading.Event) -> Iterator[Chunk]:
        for chunk in self.input.chunks(stop):
            if not len(chunk) and self.proc.poll() not in (None, 0):
                raise SourceError(f"the Pythia generator process exited with {self.proc.poll()}")
            yield chunk

    def rejected(self) -> dict[str, int]:
        return self.input.rejected()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.input.close()
        for p in Path(self._dir).glob("*"):
            p.unlink(missing_ok=True)
        Path(self._dir).rmdir()


def make_source(
    cfg, ctx: zmq.Context | None = None, curve_keys: str | Path | None = None
) -> Source:
    """The source a `config.SourceConfig` describes. A zmq source uses the config's own
    ``curve_keys`` folder, else `curve_keys` (the daemon passes ``network.curve_keys``)."""
    curve_keys = getattr(cfg, "curve_keys", None) or curve_keys
    if cfg.kind == "replay":
        return ReplaySource(cfg.paths, rate_hz=cfg.rate_hz, loop=cfg.loop)
    if cfg.kind == "pythia":
        return PythiaSource(cfg.processes, pileup=cfg.pileup, seed=cfg.seed, ctx=ctx)
    if cfg.kind == "zmq":  # the DAQ binds, the daemon connects (or, with bind, the other way)
        return ZmqInputSource(cfg.endpoint, bind=cfg.bind, ctx=ctx, curve_keys=curve_keys)
    raise ConfigError(f"source.kind: unknown source {cfg.kind!r}")


class Sequencer:
    """Cuts chunks into EventBatch messages with contiguous sequence numbers.

    A batch never spans two lumisections; a partial batch waits at most `max_wait_s` for more
    events (checked whenever a chunk, possibly empty, arrives). `max_events` caps the run.
    """

    def __init__(
        self,
        run: int,
        batch_size: int,
        events_per_lumisection: int,
        *,
        first_seq: int = 0,
        max_events: int | None = None,
        max_wait_s: float = 0.2,
    ):
        if batch_size < 1 or events_per_lumisection < 1:
            raise ConfigError("batch_size and storage.events_per_lumisection must be >= 1")
        self.run = run
        self.batch_size = batch_size
        self.per_ls = events_per_lumisection
        self.first_seq = first_seq
        self.next_seq = first_seq
        self.max_events = max_events
        self.max_wait_s = max_wait_s
        self._pending: list[Chunk] = []
        self._n_pending = 0
        self._since = 0.0

    @property
    def n_events(self) -> int:
        """Events released so far (in batches)."""
        return self.next_seq - self.first_seq

    @property
    def done(self) -> bool:
        return self.max_events is not None and self.n_events + self._n_pending >= self.max_events

    def _room(self) -> int:
        """Events the next batch may hold: batch size, lumisection edge and the event cap."""
        seq = self.next_seq
        room = min(self.batch_size, self.per_ls - seq % self.per_ls)
        if self.max_events is not None:
            room = min(room, self.max_events - self.n_events)
        return room

    def _make(self, event: np.ndarray, objects_hw: np.ndarray) -> EventBatch:
        b = EventBatch(
            run=self.run,
            first_seq=self.next_seq,
            lumisection=self.next_seq // self.per_ls,
            event=event,
            objects_hw=objects_hw,
        )
        self.next_seq += len(event)
        return b

    def _take_pending(self) -> Chunk:
        if len(self._pending) == 1:
            c = self._pending[0]
        else:
            c = Chunk(
                np.concatenate([p.event for p in self._pending]),
                np.concatenate([p.objects_hw for p in self._pending]),
            )
        self._pending, self._n_pending = [], 0
        return c

    def feed(self, chunk: Chunk, now: float | None = None) -> list[EventBatch]:
        """Batches ready after adding `chunk` (events past the cap are dropped from the chunk)."""
        now = time.monotonic() if now is None else now
        if self.max_events is not None:
            left = self.max_events - self.n_events - self._n_pending
            if len(chunk) > left:
                chunk = Chunk(chunk.event[:left], chunk.objects_hw[:left])
        out: list[EventBatch] = []
        if len(chunk):
            if not self._pending:
                self._since = now
            self._pending.append(chunk)
            self._n_pending += len(chunk)
        while self._n_pending and self._n_pending >= self._room():
            c = self._take_pending()
            pos = 0
            while len(c) - pos >= self._room() > 0:
                k = self._room()
                out.append(self._make(c.event[pos : pos + k], c.objects_hw[pos : pos + k]))
                pos += k
            if pos < len(c):
                self._pending = [Chunk(c.event[pos:], c.objects_hw[pos:])]
                self._n_pending = len(c) - pos
                self._since = now
        if self._n_pending and (now - self._since >= self.max_wait_s or self.done):
            out += self.flush()
        return out

    def flush(self) -> list[EventBatch]:
        """Whatever is pending, as batches (at the end of the source or after max_wait_s)."""
        if not self._n_pending:
            return []
        c = self._take_pending()
        out, pos = [], 0
        while pos < len(c):
            k = min(self._room(), len(c) - pos)
            out.append(self._make(c.event[pos : pos + k], c.objects_hw[pos : pos + k]))
            pos += k
        return out


# ---- the Pythia generator process: python -m l1forge.online.datapath.sources pythia ... ----


def _pythia_main(args: argparse.Namespace) -> int:
    from l1forge.sim.stream import ShardStream

    stream = ShardStream(
        args.process,
        pileup=args.pileup,
        seed=args.seed,
        shard_events=args.shard_events,
        library_events=args.library_events,
    )
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 2)
    sock.setsockopt(zmq.SNDTIMEO, 1000)
    sock.connect(args.push)
    seq = 0
    try:
        while os.getppid() == args.parent_pid or args.parent_pid == 0:
            hw = stream.next_shard()
            n = len(hw)
            event = np.arange(seq + 1, seq + n + 1, dtype=np.uint64)
            frames = encode_batch(EventBatch(0, seq, 0, event, hw))
            while True:
                try:
                    sock.send_multipart(frames, copy=False)
                    break
                except zmq.Again:  # the daemon is busy: retry unless it went away
                    if os.getppid() != args.parent_pid and args.parent_pid != 0:
                        return 0
            seq += n
    finally:
        sock.close(0)
        ctx.term()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the generator process (internal; started by PythiaSource)."""
    ap = argparse.ArgumentParser(prog="python -m l1forge.online.datapath.sources")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pythia", help="generate Pythia shards and push them as wire batches")
    p.add_argument("--push", required=True)
    p.add_argument("--process", action="append", required=True)
    p.add_argument("--pileup", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--shard-events", type=int, default=100)
    p.add_argument("--library-events", type=int, default=100)
    p.add_argument("--parent-pid", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    log.debug("generator arguments: %s", json.dumps(vars(args)))
    return _pythia_main(args)


if __name__ == "__main__":
    sys.exit(main())
