"""The source pump of a run: a source's chunks, cut into sequenced batches, pushed to the broker.

Runs on a thread of its own. Sending blocks while the dispatcher has no worker credit free
(back-pressure: the source is not read meanwhile); it gives up only when the run is aborted.
When the source ends (or fails) the pump sends ``protocol.S_END`` with the range of sequence
numbers it sent, which is what the collector's completeness proof checks against.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import zmq

from l1forge.errors import DataFormatError
from l1forge.online.datapath.protocol import S_BATCH, S_END, SOURCE_META
from l1forge.online.datapath.sources import Sequencer, Source, SourceError
from l1forge.online.datapath.wire import EventBatch, encode_batch

if TYPE_CHECKING:
    from l1forge.online.web.metrics import PipelineMetrics

log = logging.getLogger(__name__)


class SourcePump:
    """Moves one run's events from ``source`` to the dispatcher's source socket (``run``)."""

    def __init__(
        self,
        run: int,
        sequencer: Sequencer,
        *,
        stop: threading.Event,
        abort: threading.Event,
        done: threading.Event,
        on_error: Callable[[str], None],
        metrics: PipelineMetrics | None = None,
    ):
        self.run_number = run
        self.sequencer = sequencer
        self.stop = stop  # the source is to end (the run stops or failed)
        self.abort = abort  # give up a blocked send (a stop without drain)
        self.done = done  # set once S_END is sent
        self.on_error = on_error
        self.metrics = metrics
        self.source: Source | None = None
        self._lock = threading.Lock()
        self._range = (0, 0)  # [first_seq, end_seq) sent so far
        self.blocked_s = 0.0  # time spent waiting for the dispatcher (back-pressure)
        self._rejected_seen: dict[str, int] = {}

    @property
    def range(self) -> tuple[int, int]:
        """[first_seq, end_seq) of the events sent so far."""
        with self._lock:
            return self._range

    def run(self, ctx: zmq.Context, endpoint: str, source: Source) -> None:
        """The thread body: pump until the source ends, the cap is reached or ``stop`` is set."""
        self.source = source
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, 1)
        push.connect(endpoint)
        seq = self.sequencer
        try:
            for chunk in source.chunks(self.stop):
                for b in seq.feed(chunk):
                    if not self._send(push, b):
                        return
                self._count_rejections()
                if seq.done:
                    break
            for b in seq.flush():
                if not self._send(push, b):
                    return
        except (SourceError, DataFormatError, OSError) as exc:
            self.on_error(f"source failed: {exc}")
        finally:
            self._count_rejections()
            first, end = self.range
            doc = json.dumps({"first_seq": first, "end_seq": end}).encode()
            self._send_frames(push, [S_END, doc])
            push.close(0)
            self.done.set()
            log.info("source done: %d events", end - first)

    def _send(self, push: zmq.Socket, b: EventBatch) -> bool:
        meta = SOURCE_META.pack(time.perf_counter(), b.first_seq, len(b))
        if not self._send_frames(push, [S_BATCH, meta, *encode_batch(b)]):
            return False
        with self._lock:
            self._range = (self._range[0], b.first_seq + len(b))
        if self.metrics is not None:
            self.metrics.events_in.inc(len(b))
        return True

    def _send_frames(self, push: zmq.Socket, frames: list) -> bool:
        """Blocking send (back-pressure) that gives up only when the run is aborted."""
        t0 = time.perf_counter()
        while not push.poll(100, zmq.POLLOUT):
            if self.abort.is_set():
                return False
        self.blocked_s += time.perf_counter() - t0
        push.send_multipart(frames, copy=False)
        return True

    def _count_rejections(self) -> None:
        if self.metrics is None or self.source is None:
            return
        for reason, n in self.source.rejected().items():
            delta = n - self._rejected_seen.get(reason, 0)
            if delta:
                self.metrics.rejected_messages.labels(reason=reason).inc(delta)
                self._rejected_seen[reason] = n
