"""The learner's feed: zero-bias events from the daemon's monitoring tap into ``Learner.observe``.

Owns ``run_subscriber`` (the loop ``l1forge online model learn`` runs); the subscription itself
is the data path's ``TapSubscriber``, shared with the DQM service. Receiving and learning run
in two threads: the subscriber only decodes and queues, the learner thread observes (and
trains, which takes minutes), so the tap's socket is drained while a network trains and the
monitoring PUB socket does not drop what it publishes meanwhile. The queue holds at most
``backlog_events`` events; beyond that new batches are dropped and counted (a learner that
cannot keep up at all), never blocking the subscriber.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from l1forge.online.datapath.tap import TapSubscriber
from l1forge.online.datapath.wire import TOPIC_ZERO_BIAS, ResultBatch, WireError, decode_results
from l1forge.online.learning.learner import Learner

log = logging.getLogger(__name__)

BACKLOG_EVENTS = 500_000  # zero-bias events queued for the learner (about 60 MB of int16)


def run_subscriber(
    learner: Learner,
    endpoint: str,
    stop: threading.Event,
    *,
    topic: bytes = TOPIC_ZERO_BIAS,
    poll_ms: int = 200,
    context: Any = None,
    keys: Any = None,
    backlog_events: int = BACKLOG_EVENTS,
) -> dict[str, int]:
    """Feed the learner from the daemon's monitoring tap until ``stop`` is set; return counters.

    Messages are ``[topic, *online.wire.encode_results(ResultBatch)]``; the zero-bias events
    are the batch's ``objects_hw``. A malformed message is counted and logged, never fatal.
    ``keys`` is a CURVE key folder when the tap is not on loopback. Counters: ``messages``,
    ``events`` (received), ``rejected``, ``adaptations``, ``backlog_dropped_events`` (received
    but dropped because the learner was ``backlog_events`` behind) and ``max_backlog_events``.
    Events queued when ``stop`` is set are still observed before this returns.
    """
    counts = {
        "messages": 0,
        "events": 0,
        "rejected": 0,
        "adaptations": 0,
        "backlog_dropped_events": 0,
        "max_backlog_events": 0,
    }
    work: queue.SimpleQueue[ResultBatch | None] = queue.SimpleQueue()
    lock = threading.Lock()
    backlog = [0]
    failure: list[BaseException] = []

    def consume() -> None:
        while (batch := work.get()) is not None:
            try:
                res = learner.observe(
                    batch.objects_hw, run=batch.run, lumisection=batch.lumisection
                )
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
                return
            finally:
                with lock:
                    backlog[0] -= len(batch.objects_hw)
            if res is not None:
                with lock:
                    counts["adaptations"] += 1

    worker = threading.Thread(target=consume, name="learner", daemon=True)
    worker.start()
    try:
        with TapSubscriber(endpoint, topic, context=context, keys=keys) as tap:
            for frames in tap.messages(stop, poll_ms=poll_ms):
                if failure:
                    break
                try:
                    batch = decode_results(frames)
                except WireError as exc:
                    counts["rejected"] += 1
                    log.warning("monitoring message rejected (%s): %s", exc.reason, exc)
                    continue
                counts["messages"] += 1
                n = len(batch.objects_hw)
                if n == 0:
                    continue
                counts["events"] += n
                with lock:
                    if backlog[0] + n > backlog_events:
                        counts["backlog_dropped_events"] += n
                        continue
                    backlog[0] += n
                    counts["max_backlog_events"] = max(counts["max_backlog_events"], backlog[0])
                work.put(batch)
    finally:
        work.put(None)
        worker.join()
    if failure:
        raise failure[0]
    return counts
