"""The lossless broker between the source and the workers: credits, in-flight table, redelivery.

Workers (DEALER) connect to the dispatcher's ROUTER and announce how many batches they may hold
(credits). A batch goes only to a worker with a free credit, so when every credit is taken the
source is not read and blocks on its bounded inproc socket (back-pressure, bounded memory).
Each sent batch stays in the in-flight table until the collector acknowledges its result; a worker
that misses heartbeats for `timeout_s`, or whose local process dies, has its batches requeued to
the others (redelivery; the collector suppresses any late duplicate).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from l1forge.errors import ConfigError, L1ForgeError
from l1forge.online.datapath.inflight import Broadcast, InFlightBatch, WorkerRecord
from l1forge.online.datapath.protocol import (
    C_FAILED,
    C_NACK,
    C_RESULT,
    D_BATCH,
    D_HEARTBEAT,
    D_SET_MENU,
    D_SET_MODEL,
    D_SET_SCALING,
    D_STOP,
    D_SWAP,
    D_WHO,
    FLAG_OWNER,
    FLAG_SAMPLED,
    META,
    S_END,
    SOURCE_META,
    U64,
    W_ACK,
    W_CONFIGURED,
    W_FAILED,
    W_HEARTBEAT,
    W_READY,
    W_RESULT,
    W_STATS,
    InputScaling,
    ModelFiles,
    WorkerSetup,
)
from l1forge.online.datapath.status import DispatcherStatus

if TYPE_CHECKING:
    from l1forge.online.web.metrics import PipelineMetrics

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a batch whose results are unreadable this often is reported as failed
MASK64 = (1 << 64) - 1  # is_sampled mixes 64-bit words


class DispatcherError(L1ForgeError, RuntimeError):
    """A broadcast (set_model / set_menu / swap) failed or timed out on some worker."""


def is_sampled(first_seq: int, fraction: float) -> bool:
    """Deterministic choice of the batches published on the monitoring tap (by first_seq).

    Each batch is taken with probability `fraction`, independently of its neighbours, whatever
    the batch size: first_seq goes through a full 64-bit mixer before the comparison.
    """
    if fraction <= 0:
        return False
    # splitmix64 (Steele, Lea & Flood, OOPSLA 2014). A bare multiplicative hash maps the
    # first_seq of 4096-event batches to a lattice of step ~7/15, so some fractions got no batch
    h = (first_seq + 0x9E3779B97F4A7C15) & MASK64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & MASK64
    h ^= h >> 31
    return h / 2.0**64 < fraction


class Dispatcher:
    """Runs in its own thread (`run`); other threads use `broadcast_*`, `status`, `request_stop`."""

    def __init__(
        self,
        ctx: zmq.Context,
        *,
        worker_endpoint: str,
        source_endpoint: str,
        collector_endpoint: str,
        setup: WorkerSetup,
        credits: int,
        heartbeat_s: float,
        timeout_s: float,
        monitor_fraction: float = 0.0,
        is_alive: Callable[[str], bool | None] | None = None,
        reap: Callable[[], int] | None = None,
        metrics: PipelineMetrics | None = None,
        curve_keys: str | None = None,
    ):
        from l1forge.online.security import bind_server

        if credits < 1:
            raise ConfigError(f"workers.credits: must be >= 1, got {credits}")
        self.ctx = ctx
        self.setup = setup
        self.credits = credits
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s
        self.monitor_fraction = monitor_fraction
        self.is_alive = is_alive or (lambda name: None)
        self.reap = reap or (lambda: 0)  # restarts local workers gone while not registered
        self.metrics = metrics
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, 0)  # credits bound what is queued per worker
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.worker_endpoint = bind_server(self.router, worker_endpoint, curve_keys)
        self.source_in = ctx.socket(zmq.PULL)
        self.source_in.setsockopt(zmq.LINGER, 0)
        self.source_in.setsockopt(zmq.RCVHWM, 1)
        self.source_in.bind(source_endpoint)
        self.collector = ctx.socket(zmq.PAIR)
        self.collector.setsockopt(zmq.LINGER, 0)
        self.collector.setsockopt(zmq.SNDHWM, 0)
        self.collector.setsockopt(zmq.RCVHWM, 0)
        self.collector.bind(collector_endpoint)
        self.workers: dict[bytes, WorkerRecord] = {}
        self.inflight: dict[int, InFlightBatch] = {}
        self.redeliver: deque[int] = deque()
        self.commands: queue.Queue = queue.Queue()
        self._broadcasts: dict[int, Broadcast] = {}
        self._token = 0
        self._lock = threading.Lock()  # guards the counters read by status()
        self.source_range: tuple[int, int] | None = None  # [first_seq, end_seq) once ended
        self.drained = threading.Event()
        self._stop = threading.Event()
        self._stop_workers = False
        self.n_dispatched = 0
        self.n_redelivered = 0
        self.n_unknown = 0
        self.dead_workers: list[str] = []
        self.setup_errors: dict[str, str] = {}  # worker -> why it could not load the setup
        self.firmware: dict[str, dict] = {}  # worker -> its register banks' seed status (W_STATS)
        self.max_inflight = 0
        self.cpu_s = 0.0  # CPU seconds of the dispatcher thread, set when its loop ends

    # ---- called from other threads ----

    def request_stop(self, stop_workers: bool = True) -> None:
        """Ask the loop to tell the workers to stop (if asked) and to return."""
        self._stop_workers = stop_workers
        self._stop.set()

    def broadcast_model(self, model: ModelFiles, timeout_s: float = 60.0) -> dict[str, dict]:
        """Send a new IR to every worker; they swap between batches and answer with its sha256."""
        head = json.dumps({"name": model.name}).encode()
        return self._broadcast([D_SET_MODEL, head, model.ir_json, model.ir_npz], timeout_s, model)

    def broadcast_menu(self, menu_json: str, timeout_s: float = 30.0) -> dict[str, dict]:
        """Send a new menu to every worker; each answers with the menu's sha256."""
        head = json.dumps({"menu": menu_json}).encode()
        return self._broadcast([D_SET_MENU, head], timeout_s, menu_json)

    def broadcast_swap(
        self, model: ModelFiles, menu_json: str, timeout_s: float = 60.0
    ) -> dict[str, dict]:
        """Send a model and its menu in one message: each worker installs both between two
        batches and answers with both sha256."""
        head = json.dumps({"name": model.name, "menu": menu_json}).encode()
        frames = [D_SWAP, head, model.ir_json, model.ir_npz]
        return self._broadcast(frames, timeout_s, (model, menu_json))

    def broadcast_scaling(self, scaling: InputScaling, timeout_s: float = 30.0) -> dict[str, dict]:
        """Send a model's new input offsets and shifts to every worker; each answers with what
        is now active (and the register bank's VERSION where it has one)."""
        head = json.dumps(scaling.to_json()).encode()
        return self._broadcast([D_SET_SCALING, head], timeout_s, scaling)

    def _broadcast(self, frames: list, timeout_s: float, update: Any) -> dict[str, dict]:
        with self._lock:
            self._token += 1
            token = self._token
        b = Broadcast(token, frames, set())
        self.commands.put(("broadcast", b, update))
        if not b.done.wait(timeout_s):
            raise DispatcherError(f"no answer from workers within {timeout_s} s: {b.waiting}")
        bad = {w: a for w, a in b.answers.items() if not a.get("ok")}
        if bad:
            raise DispatcherError(f"workers refused the update: {json.dumps(bad)}")
        return b.answers

    def status(self) -> DispatcherStatus:
        with self._lock:
            return {
                "workers": {
                    w.name: {
                        "pid": w.pid,
                        "host": w.host,
                        "in_flight": len(w.inflight),
                        "batches_done": w.n_done,
                        "configured": w.configured,
                    }
                    for w in self.workers.values()
                },
                "workers_alive": len(self.workers),
                "dead_workers": list(self.dead_workers),
                "worker_setup_errors": dict(self.setup_errors),
                "in_flight_batches": len(self.inflight),
                "max_in_flight_batches": self.max_inflight,
                "queued_batches": len(self.redeliver),
                "batches_dispatched": self.n_dispatched,
                "batches_redelivered": self.n_redelivered,
                "unknown_worker_messages": self.n_unknown,
                "firmware": {w: dict(f) for w, f in self.firmware.items()},
                "seed_mismatches": sum(
                    sum(m.get("seed_mismatches", {}).values())
                    for f in self.firmware.values()
                    for m in f.values()
                ),
            }

    # ---- the loop ----

    def run(self) -> None:
        """The dispatcher loop; returns after request_stop()."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.collector, zmq.POLLIN)
        source_polled = False
        next_beat = time.monotonic()
        cpu0 = time.thread_time()
        try:
            while not self._stop.is_set():
                want_source = (
                    self.source_range is None and not self.redeliver and self._free() is not None
                )
                if want_source != source_polled:
                    if want_source:
                        poller.register(self.source_in, zmq.POLLIN)
                    else:
                        poller.unregister(self.source_in)
                    source_polled = want_source
                events = dict(poller.poll(20))
                if self.collector in events:
                    self._from_collector()
                if self.router in events:
                    self._from_workers()
                while self.redeliver and self._free() and self._redeliver_one():
                    pass
                if source_polled and self.source_in in events and self._free():
                    self._from_source()
                self._commands()
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat(now)
                    next_beat = now + self.heartbeat_s / 2
                if self.source_range is not None and not self.inflight:
                    self.drained.set()
            if self._stop_workers:
                for w in list(self.workers.values()):
                    self._send(w.ident, [D_STOP])
        finally:
            self.cpu_s = time.thread_time() - cpu0
            for b in self._broadcasts.values():
                b.done.set()
            self.router.close(0)
            self.source_in.close(0)
            self.collector.close(0)

    def _free(self, avoid: set[bytes] | frozenset = frozenset()) -> WorkerRecord | None:
        """The configured worker with the most free credits, ties to the one sent the least
        (None when all credits are taken). Workers in `avoid` (they returned an unreadable
        result for this batch) are used only when no other worker is left."""
        ready = [w for w in self.workers.values() if w.configured]
        others = [w for w in ready if w.ident not in avoid]
        best, key = None, (0, 0)
        for w in others or ready:
            free = w.credits - len(w.inflight)
            if free > 0 and (free, -w.n_sent) > key:
                best, key = w, (free, -w.n_sent)
        return best

    def _send(self, ident: bytes, frames: list) -> bool:
        try:
            self.router.send_multipart([ident, *frames], copy=False)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone
            log.warning("cannot send to worker %r: %s", ident, exc)
            return False

    def _dispatch(self, entry: InFlightBatch) -> None:
        w = self._free(entry.avoid)
        assert w is not None
        if not self._send(w.ident, [D_BATCH, *entry.frames]):
            self._declare_dead(w, "unreachable")
            self.inflight[entry.first_seq] = entry
            entry.worker = None
            self.redeliver.appendleft(entry.first_seq)
            return
        entry.worker = w.ident
        entry.attempts += 1
        with self._lock:
            w.inflight.add(entry.first_seq)
            w.n_sent += 1
            self.inflight[entry.first_seq] = entry
            self.n_dispatched += 1
            self.max_inflight = max(self.max_inflight, len(self.inflight))
        self._gauges()

    def _from_source(self) -> None:
        frames = self.source_in.recv_multipart(copy=False)
        kind = frames[0].bytes
        if kind == S_END:
            info = json.loads(frames[1].bytes)
            self.source_range = (int(info["first_seq"]), int(info["end_seq"]))
            log.info("source ended: sequence numbers %s", self.source_range)
            return
        t_source, first_seq, n = SOURCE_META.unpack(frames[1].bytes)
        self._dispatch(InFlightBatch(first_seq, n, frames[2:], t_source, None))

    def _redeliver_one(self) -> bool:
        """Send the first requeued batch again; False when no suitable worker has a credit."""
        seq = self.redeliver[0]
        entry = self.inflight.get(seq)
        if entry is None or entry.worker is not None:  # acknowledged meanwhile
            self.redeliver.popleft()
            return True
        if self._free(entry.avoid) is None:
            return False
        self.redeliver.popleft()
        del self.inflight[seq]
        with self._lock:
            self.n_redelivered += 1
        if self.metrics is not None:
            self.metrics.redelivered_batches.inc()
        self._dispatch(entry)
        return True

    def _from_collector(self) -> None:
        while True:
            try:
                frames = self.collector.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            seq = U64.unpack(frames[1])[0]
            if frames[0] == C_NACK:
                self._retry(seq)
                continue
            with self._lock:
                entry = self.inflight.pop(seq, None)
                if entry is not None and entry.worker in self.workers:
                    w = self.workers[entry.worker]
                    w.inflight.discard(seq)
                    w.n_done += 1
        self._gauges()

    def _retry(self, seq: int) -> None:
        """Send a batch again after an unreadable result (or report it failed after a few)."""
        entry = self.inflight.get(seq)
        if entry is None or entry.worker is None:
            return
        w = self.workers.get(entry.worker)
        entry.avoid.add(entry.worker)
        with self._lock:
            if w is not None:
                w.inflight.discard(seq)
                w.n_bad += 1
            entry.worker = None
        if w is not None and w.n_bad >= MAX_ATTEMPTS:  # this worker is broken: stop using it
            self._send(w.ident, [D_STOP])
            self._declare_dead(w, f"{w.n_bad} unreadable results")
        if entry.attempts >= MAX_ATTEMPTS:
            doc = {"reason": "bad_results", "message": f"{entry.attempts} unreadable results"}
            meta = META.pack(seq, entry.t_source, 0, entry.n_events, 0)
            self.collector.send_multipart([C_FAILED, meta, json.dumps(doc).encode()])
            return  # the collector acknowledges the failure, which frees the entry
        self.redeliver.append(seq)

    def _from_workers(self) -> None:
        for _ in range(256):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            ident, kind = frames[0].bytes, frames[1].bytes
            if kind == W_HEARTBEAT and len(frames) > 2:  # from the worker's pulse thread
                pulsed = self.workers.get(frames[2].bytes)
                if pulsed is not None:
                    pulsed.last_seen = time.monotonic()
                continue
            w = self.workers.get(ident)
            if w is not None:
                w.last_seen = time.monotonic()
            if kind == W_RESULT or kind == W_FAILED:
                self._result(w, frames[2:], kind)
            elif kind == W_READY:
                self._ready(ident, json.loads(frames[2].bytes))
            elif w is None:
                with self._lock:
                    self.n_unknown += 1
                self._send(ident, [D_WHO])
            elif kind == W_CONFIGURED:
                self._configured(w, json.loads(frames[2].bytes))
            elif kind == W_ACK:
                self._ack(w, json.loads(frames[2].bytes))
            elif kind == W_STATS:
                with self._lock:
                    self.firmware[w.name] = json.loads(frames[2].bytes)
            elif kind != W_HEARTBEAT:
                log.warning("worker %s sent an unknown message %r", w.name, kind[:16])

    def _result(self, w: WorkerRecord | None, frames: list, kind: bytes) -> None:
        seq = U64.unpack(frames[0].bytes)[0]
        entry = self.inflight.get(seq)
        t_source = entry.t_source if entry is not None else 0.0
        owner = entry is not None and w is not None and entry.worker == w.ident
        if kind == W_FAILED:
            # not the owner: the batch is (or was) with another worker, whose answer counts
            if entry is None or not owner:
                log.warning("ignoring a failure report for batch %d from a former holder", seq)
                return
            meta = META.pack(seq, t_source, 0, entry.n_events, FLAG_OWNER)
            self.collector.send_multipart([C_FAILED, meta, frames[1]], copy=False)
            return
        result = frames[1:]
        sampled = entry is not None and is_sampled(seq, self.monitor_fraction)
        n_events = entry.n_events if entry is not None else 0
        flags = (FLAG_SAMPLED if sampled else 0) | (FLAG_OWNER if owner else 0)
        meta = META.pack(seq, t_source, len(result), n_events, flags)
        extra = entry.frames if entry is not None and sampled else []
        self.collector.send_multipart([C_RESULT, meta, *result, *extra], copy=False)
        if w is None:  # a result from a worker declared dead still counts (first one wins)
            with self._lock:
                self.n_unknown += 1

    def _ready(self, ident: bytes, info: dict) -> None:
        old = self.workers.get(ident)
        if old is not None:  # it restarted: what it held is lost with it
            self._declare_dead(old, "re-registered")
        w = WorkerRecord(
            ident=ident,
            name=str(info.get("name", ident.hex())),
            pid=int(info.get("pid", 0)),
            host=str(info.get("host", "")),
            credits=max(1, min(int(info.get("credits", self.credits)), self.credits)),
            last_seen=time.monotonic(),
        )
        with self._lock:
            self.workers[ident] = w
        log.info("worker %s (pid %d on %s) connected", w.name, w.pid, w.host or "?")
        self._send(ident, self.setup.frames())

    def _configured(self, w: WorkerRecord, info: dict) -> None:
        if "error" in info:
            log.error("worker %s cannot load the run setup: %s", w.name, info["error"])
            with self._lock:
                self.setup_errors[w.name] = str(info["error"])
            return
        w.configured = True
        log.info("worker %s ready: models %s", w.name, info.get("models"))
        self._gauges()

    def _ack(self, w: WorkerRecord, info: dict) -> None:
        b = self._broadcasts.get(int(info.get("token", -1)))
        if b is None:
            return
        b.answers[w.name] = info
        b.waiting.discard(w.ident)
        if not b.waiting:
            b.done.set()
            del self._broadcasts[b.token]

    def _commands(self) -> None:
        while True:
            try:
                cmd, b, update = self.commands.get_nowait()
            except queue.Empty:
                return
            if cmd != "broadcast":
                continue
            # a worker that (re)connects from now on is configured with the update
            for part in update if isinstance(update, tuple) else (update,):  # swap: both
                self.setup = _updated(self.setup, part)
            head = json.loads(b.frames[1])
            head["token"] = b.token
            frames = [b.frames[0], json.dumps(head).encode(), *b.frames[2:]]
            for w in self.workers.values():
                if self._send(w.ident, frames):
                    b.waiting.add(w.ident)
            if b.waiting:
                self._broadcasts[b.token] = b
            else:
                b.done.set()

    def _heartbeat(self, now: float) -> None:
        self.reap()
        for w in list(self.workers.values()):
            alive = self.is_alive(w.name)
            if alive is False:
                self._declare_dead(w, "process exited")
            elif now - w.last_seen > self.timeout_s:
                self._declare_dead(w, f"silent for {now - w.last_seen:.1f} s")
            else:
                self._send(w.ident, [D_HEARTBEAT])

    def _declare_dead(self, w: WorkerRecord, why: str) -> None:
        with self._lock:
            self.workers.pop(w.ident, None)
            self.dead_workers.append(w.name)
            seqs = sorted(w.inflight)
            for seq in seqs:
                entry = self.inflight.get(seq)
                if entry is not None and entry.worker == w.ident:
                    entry.worker = None
                    self.redeliver.append(seq)
        log.warning("worker %s declared dead (%s): %d batches requeued", w.name, why, len(seqs))
        for b in list(self._broadcasts.values()):
            b.waiting.discard(w.ident)
            if not b.waiting:
                b.done.set()
                del self._broadcasts[b.token]
        self._gauges()

    def _gauges(self) -> None:
        if self.metrics is None:
            return
        self.metrics.in_flight_batches.set(len(self.inflight))
        self.metrics.queue_depth.set(len(self.redeliver))
        self.metrics.workers_alive.set(sum(w.configured for w in self.workers.values()))


def _updated(setup: WorkerSetup, update: Any) -> WorkerSetup:
    """The setup a worker connecting later must load: with the new model (and that model's own
    input scaling again), the new input scaling or the new menu."""
    if isinstance(update, ModelFiles):
        models = tuple(update if m.name == update.name else m for m in setup.models)
        scaling = tuple(s for s in setup.scaling if s.model != update.name)
        return dataclasses.replace(setup, models=models, scaling=scaling)
    if isinstance(update, InputScaling):
        kept = tuple(s for s in setup.scaling if s.model != update.model)
        return dataclasses.replace(setup, scaling=(*kept, update))
    return dataclasses.replace(setup, menu_json=update)
