"""The collector: deduplicated results -> storage, seed counts, monitoring tap, completeness proof.

Results arrive from the dispatcher (inproc PAIR); the first result of a batch (run, first_seq)
is kept, any later copy (a redelivered batch) is counted as a suppressed duplicate. Accepted
events go to `storage.AcceptedWriter`, one ROOT file per lumisection. After the result is
taken the collector acknowledges it, which is what frees the batch's in-flight entry. When
storage fails the collector keeps every accepted event in memory (reported as held) and raises
the error flag so the pipeline stops taking data.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import zmq

from l1forge.errors import L1ForgeError
from l1forge.online.datapath.menu import Menu, seed_counts
from l1forge.online.datapath.protocol import (
    C_ACK,
    C_FAILED,
    C_NACK,
    C_RESULT,
    FLAG_OWNER,
    META,
    U64,
)
from l1forge.online.datapath.status import CollectorStatus
from l1forge.online.datapath.storage import (
    AcceptedWriter,
    DiskFullError,
    FileRecord,
    StorageError,
)
from l1forge.online.datapath.wire import (
    TOPIC_MONITOR,
    TOPIC_ZERO_BIAS,
    ResultBatch,
    WireError,
    decode_batch,
    decode_results,
    encode_results,
)

if TYPE_CHECKING:
    from l1forge.online.web.metrics import PipelineMetrics

log = logging.getLogger(__name__)
_T = TypeVar("_T")

LATENCY_WINDOW = 100_000  # batch latencies kept for percentiles
TAP_LINGER_MS = 2000  # at the end of a run, queued tap messages still go out for this long


class TapError(L1ForgeError, RuntimeError):
    """No subscriber reached the monitoring tap in time (the message names the topic)."""


@dataclass(frozen=True)
class Completeness:
    """Proof that every sequence number from first to last was collected exactly once."""

    first_seq: int
    end_seq: int  # one past the last sequence number sent
    n_expected: int
    n_collected: int  # distinct sequence numbers collected
    n_failed: int  # events of batches no worker could process (counted, not lost)
    lost: int
    duplicated: int  # events collected twice (after dedup; must be 0)
    duplicates_suppressed: int  # redelivered batches whose first result had already arrived
    missing_ranges: tuple[tuple[int, int], ...]  # first few [start, end) gaps


@dataclass
class _Counts:
    n_processed: int = 0
    n_accepted: int = 0
    n_batches: int = 0
    n_failed: int = 0
    n_duplicates: int = 0
    n_bad_results: int = 0
    n_held: int = 0
    seeds: np.ndarray = field(default_factory=lambda: np.zeros(32, np.int64))
    failed_reasons: dict[str, int] = field(default_factory=dict)


class Collector:
    """Runs in its own thread (`run`); `finish` closes storage and proves completeness."""

    def __init__(
        self,
        ctx: zmq.Context,
        *,
        endpoint: str,
        monitor_endpoint: str,
        run: int,
        writer: AcceptedWriter,
        menu: Menu,
        model_names: tuple[str, ...],
        events_per_lumisection: int,
        full_wait_s: float = 0.0,
        metrics: PipelineMetrics | None = None,
        on_error: Callable[[str], None] | None = None,
        curve_keys: str | None = None,
    ):
        from l1forge.online.security import bind_server

        self.run_number = run
        self.writer = writer
        self.menu = menu
        self.model_names = model_names
        self.per_ls = events_per_lumisection
        self.full_wait_s = full_wait_s
        self.full_waits = 0
        self.waiting_since: float | None = None
        self.metrics = metrics
        self.on_error = on_error or (lambda msg: None)
        self.pair = ctx.socket(zmq.PAIR)
        self.pair.setsockopt(zmq.LINGER, 0)
        self.pair.setsockopt(zmq.SNDHWM, 0)
        self.pair.setsockopt(zmq.RCVHWM, 0)
        self.pair.connect(endpoint)
        # XPUB: a PUB that also reports subscriptions (see `wait_subscribed`)
        self.pub = ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 64)  # a slow subscriber loses tap messages, not data
        self.monitor_endpoint = bind_server(self.pub, monitor_endpoint, curve_keys)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.counts = _Counts()
        self.seen: dict[int, int] = {}  # first_seq -> n events (collected batches)
        self.failed: dict[int, int] = {}  # first_seq -> n events (batches no worker processed)
        self.ls_events: dict[int, int] = {}  # lumisection -> events collected
        self.ls_closed: set[int] = set()
        self.records: list[FileRecord] = []
        self.latencies = np.zeros(LATENCY_WINDOW)
        self.n_latency = 0
        self.error: str | None = None
        self.held: list[ResultBatch] = []  # accepted events not handed to storage after an error
        self.zb_mask = np.uint32(sum(1 << i for i, s in enumerate(menu.seeds) if s.zero_bias))
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.tap_batches = 0  # b"mon" messages published
        self.tap_events = 0
        self.cpu_s = 0.0  # CPU seconds of the collector thread, set when its loop ends

    def request_stop(self) -> None:
        self._stop.set()

    def wait_subscribed(self, topic: bytes, timeout_s: float) -> None:
        """Block until a subscription matching `topic` has reached the tap; call before `run`.

        A PUB socket drops what it sends before a subscription arrives (ZeroMQ's slow joiner),
        so a subscriber that must see a run from its first batch is waited for.
        """
        deadline = time.monotonic() + timeout_s
        while (left_ms := int(1e3 * (deadline - time.monotonic()))) > 0:
            if self.pub.poll(left_ms, zmq.POLLIN):
                msg = self.pub.recv()
                if msg[:1] == b"\x01" and topic.startswith(msg[1:]):
                    return
        raise TapError(
            f"no subscription to topic {topic!r} reached the monitoring tap "
            f"{self.monitor_endpoint} within {timeout_s:.0f} s"
        )

    def set_menu(self, menu: Menu) -> None:
        """A new menu from set_menu: same seed names (storage branches are fixed per run)."""
        with self._lock:
            self.menu = menu
            self.zb_mask = np.uint32(sum(1 << i for i, s in enumerate(menu.seeds) if s.zero_bias))

    # ---- the loop ----

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pair, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        cpu0 = time.thread_time()
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(50))
                if self.pub in ready:
                    self.pub.recv()  # a (un)subscription to the tap: nothing to do
                if self.pair not in ready:
                    continue
                frames = self.pair.recv_multipart(copy=False)
                kind = frames[0].bytes
                seq, t_source, n_res, n_events, flags = META.unpack(frames[1].bytes)
                reply: bytes | None = C_ACK
                if kind == C_RESULT:
                    res, batch = frames[2 : 2 + n_res], frames[2 + n_res :]
                    if not self._result(seq, t_source, n_events, res, batch):
                        # unreadable: the holder sends it again; a stray copy is just dropped
                        reply = C_NACK if flags & FLAG_OWNER else None
                elif kind == C_FAILED:
                    self._failed(seq, n_events, json.loads(frames[2].bytes))
                if reply is not None:
                    self.pair.send_multipart([reply, U64.pack(seq)])
        finally:
            self.cpu_s = time.thread_time() - cpu0
            self.pair.close(0)

    def _result(
        self, seq: int, t_source: float, n_events: int, res_frames: list, batch_frames: list
    ) -> bool:
        """Take one result; False when it is unreadable (the batch is then sent again)."""
        now = time.perf_counter()
        try:
            r = decode_results(res_frames)
        except WireError as exc:  # a worker on another host sent garbage: redelivery recovers
            with self._lock:
                self.counts.n_bad_results += 1
            log.error("bad result for batch %d: %s", seq, exc)
            if self.metrics is not None:
                self.metrics.rejected_messages.labels(reason=f"result_{exc.reason}").inc()
            return False
        if r.first_seq != seq or r.run != self.run_number or (n_events and len(r) != n_events):
            with self._lock:
                self.counts.n_bad_results += 1
            log.error(
                "result for batch %d names run %d batch %d of %d events",
                seq,
                r.run,
                r.first_seq,
                len(r),
            )
            return False
        if seq in self.seen or seq in self.failed:
            with self._lock:
                self.counts.n_duplicates += 1
            return True
        n = len(r)
        counts = seed_counts(r.seed_bits, len(self.menu.seeds))
        n_acc = len(r.accepted_index)
        with self._lock:
            self.seen[seq] = n
            c = self.counts
            c.n_processed += n
            c.n_accepted += n_acc
            c.n_batches += 1
            c.seeds[: len(counts)] += counts
            if t_source > 0:
                self.latencies[self.n_latency % LATENCY_WINDOW] = now - t_source
                self.n_latency += 1
            self.t_first = self.t_first or now
            self.t_last = now
        self._store(r)
        self._publish(r, batch_frames)
        if self.metrics is not None:
            m = self.metrics
            m.events_processed.inc(n)
            m.events_accepted.inc(n_acc)
            for name, k in zip(self.menu.names, counts.tolist(), strict=True):
                if k:
                    m.seed_accepted.labels(seed=name).inc(k)
            m.batch_latency_s.observe(r.latency_s)
        return True

    def _store(self, r: ResultBatch) -> None:
        ls = r.lumisection
        if self.error is None and len(r.accepted_index):
            idx = r.accepted_index.astype(np.int64)
            try:
                self.writer.write(
                    ls,
                    r.run,
                    r.seqs()[idx],
                    r.event[idx],
                    r.objects_hw,
                    r.scores[idx],
                    r.seed_bits[idx],
                )
            except StorageError as exc:
                self._fail(str(exc))
        if self.error is not None and len(r.accepted_index):
            with self._lock:
                self.held.append(r)
                self.counts.n_held += len(r.accepted_index)
        self.ls_events[ls] = self.ls_events.get(ls, 0) + len(r)
        if self.error is None and self.ls_events[ls] >= self.per_ls:
            self._end_lumisection(ls)

    def _until_space(self, write: Callable[[], _T]) -> _T:
        """``write()``, retried every second for up to ``full_wait_s`` while the disk is full.
        Meanwhile nothing is acknowledged, so the workers' credits fill and the source blocks:
        the data waits upstream instead of being lost or failing the run."""
        deadline: float | None = None
        while True:
            try:
                out = write()
            except DiskFullError as exc:
                now = time.monotonic()
                if deadline is None:
                    if self.full_wait_s <= 0:
                        raise
                    deadline = now + self.full_wait_s
                    with self._lock:
                        self.full_waits += 1
                        self.waiting_since = now
                    log.warning("%s; waiting up to %.0f s for space", exc, self.full_wait_s)
                if now >= deadline:
                    raise
                time.sleep(min(1.0, deadline - now))
                continue
            if deadline is not None:
                log.warning("storage has space again: the run goes on")
                with self._lock:
                    self.waiting_since = None
            return out

    def _end_lumisection(self, ls: int) -> None:
        try:
            rec = self._until_space(lambda: self.writer.end_lumisection(ls))
        except StorageError as exc:
            self._fail(str(exc))
            return
        self.ls_closed.add(ls)
        with self._lock:
            self.records.append(rec)
        if self.metrics is not None:
            self.metrics.storage_bytes.inc(rec.bytes)

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
            log.error("storage failed, the run stops taking data: %s", message)
            self.on_error(message)

    def _failed(self, seq: int, n: int, doc: dict) -> None:
        if seq in self.seen or seq in self.failed:
            with self._lock:
                self.counts.n_duplicates += 1
            return
        reason = str(doc.get("reason", "worker"))
        log.error("batch %d could not be processed: %s", seq, doc.get("message"))
        self.failed[seq] = n
        with self._lock:
            self.counts.failed_reasons[reason] = self.counts.failed_reasons.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.rejected_messages.labels(reason=reason).inc()

    def _publish(self, r: ResultBatch, batch_frames: list) -> None:
        if batch_frames:  # sampled: every event of the batch, with its objects
            try:
                b = decode_batch(batch_frames)
            except WireError:
                b = None
            if b is not None:
                full = ResultBatch(
                    r.run,
                    r.first_seq,
                    r.lumisection,
                    r.event,
                    r.scores,
                    r.seed_bits,
                    b.objects_hw,
                    np.arange(len(r), dtype=np.uint32),
                    r.latency_s,
                    r.worker,
                )
                self.pub.send_multipart([TOPIC_MONITOR, *encode_results(full)], copy=False)
                with self._lock:
                    self.tap_batches += 1
                    self.tap_events += len(full)
        if self.zb_mask and len(r.accepted_index):
            zb_pos = np.flatnonzero(r.seed_bits[r.accepted_index] & self.zb_mask)
            if len(zb_pos):
                idx = r.accepted_index[zb_pos]
                zb = ResultBatch(
                    r.run,
                    r.first_seq,
                    r.lumisection,
                    r.event[idx],
                    r.scores[idx],
                    r.seed_bits[idx],
                    r.objects_hw[zb_pos],
                    np.arange(len(idx), dtype=np.uint32),
                    r.latency_s,
                    r.worker,
                )
                self.pub.send_multipart([TOPIC_ZERO_BIAS, *encode_results(zb)], copy=False)

    # ---- after the loop ----

    def finish(self, first_seq: int, end_seq: int) -> Completeness:
        """Close storage (unless it failed) and prove completeness over [first_seq, end_seq)."""
        if self.error is None:
            try:
                for rec in self._until_space(self.writer.close):
                    if rec not in self.records:
                        self.records.append(rec)
            except StorageError as exc:
                self._fail(str(exc))
        if self.error is not None:
            held = self.writer.pending_count()
            with self._lock:
                self.counts.n_held = held + sum(len(r.accepted_index) for r in self.held)
        self.pub.close(TAP_LINGER_MS)
        return self.completeness(first_seq, end_seq)

    def completeness(self, first_seq: int, end_seq: int) -> Completeness:
        """Interval check of the collected batches against the range the source sent."""
        spans = sorted(self.seen.items())
        all_spans = sorted(spans + list(self.failed.items()))
        covered, duplicated, pos, gaps = 0, 0, first_seq, []
        for start, n in all_spans:
            end = start + n
            if start > pos:
                gaps.append((pos, start))
            elif start < pos:
                duplicated += min(end, pos) - start
            pos = max(pos, end)
        if pos < end_seq:
            gaps.append((pos, end_seq))
        covered = sum(n for _, n in all_spans) - duplicated
        n_expected = end_seq - first_seq
        n_failed = sum(self.failed.values())
        return Completeness(
            first_seq=first_seq,
            end_seq=end_seq,
            n_expected=n_expected,
            n_collected=covered - n_failed,
            n_failed=n_failed,
            lost=sum(b - a for a, b in gaps),
            duplicated=duplicated,
            duplicates_suppressed=self.counts.n_duplicates,
            missing_ranges=tuple(gaps[:10]),
        )

    def status(self) -> CollectorStatus:
        with self._lock:
            c = self.counts
            n_lat = min(self.n_latency, LATENCY_WINDOW)
            lat = self.latencies[:n_lat]
            seeds = c.seeds[: len(self.menu.seeds)].tolist()
            names = self.menu.names
            out: CollectorStatus = {
                "events_processed": c.n_processed,
                "events_accepted": c.n_accepted,
                "batches_collected": c.n_batches,
                "duplicates_suppressed": c.n_duplicates,
                "bad_results": c.n_bad_results,
                "failed_batches": dict(c.failed_reasons),
                "seed_counts": dict(zip(names, seeds, strict=True)),
                "seed_rates_hz": self.menu.rates_hz(
                    dict(zip(names, seeds, strict=True)), c.n_processed
                ),
                "files": len(self.records),
                "held_accepted_events": c.n_held,
                "tap_batches": self.tap_batches,
                "tap_events": self.tap_events,
                "storage_error": self.error,
                "storage_full_waits": self.full_waits,
                "storage_waiting_s": (
                    0.0 if self.waiting_since is None else time.monotonic() - self.waiting_since
                ),
            }
        if n_lat:
            p50, p99 = np.percentile(lat, [50, 99])
            out["latency_ms"] = {"p50": 1e3 * p50, "p99": 1e3 * p99, "n": n_lat}
        return out

    def held_events(self) -> dict[str, np.ndarray]:
        """Accepted events not in a finished file after a storage failure (seq, event, bits)."""
        parts = [self.writer.pending()] if self.error is not None else []
        seqs = [p.seq for p in parts] + [r.seqs()[r.accepted_index] for r in self.held]
        bits = [p.seed_bits for p in parts] + [r.seed_bits[r.accepted_index] for r in self.held]
        return {
            "seq": np.concatenate(seqs) if seqs else np.zeros(0, np.uint64),
            "seed_bits": np.concatenate(bits) if bits else np.zeros(0, np.uint32),
        }
