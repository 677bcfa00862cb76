"""The learner's feed: zero-bias events from the daemon's monitoring tap into ``Learner.observe``.

Owns ``run_subscriber`` (the loop ``l1forge online model learn`` runs); the subscription itself
is the data path's ``TapSubscriber``, shared with the DQM service.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from l1forge.online.datapath.tap import TapSubscriber
from l1forge.online.datapath.wire import TOPIC_ZERO_BIAS, WireError, decode_results
from l1forge.online.learning.learner import Learner

log = logging.getLogger(__name__)


def run_subscriber(
    learner: Learner,
    endpoint: str,
    stop: threading.Event,
    *,
    topic: bytes = TOPIC_ZERO_BIAS,
    poll_ms: int = 200,
    context: Any = None,
    keys: Any = None,
) -> dict[str, int]:
    """Feed the learner from the daemon's monitoring tap until ``stop`` is set; return counters.

    Messages are ``[topic, *online.wire.encode_results(ResultBatch)]``; the zero-bias events
    are the batch's ``objects_hw``. A malformed message is counted and logged, never fatal.
    ``keys`` is a CURVE key folder when the tap is not on loopback.
    """
    counts = {"messages": 0, "events": 0, "rejected": 0, "adaptations": 0}
    with TapSubscriber(endpoint, topic, context=context, keys=keys) as tap:
        for frames in tap.messages(stop, poll_ms=poll_ms):
            try:
                batch = decode_results(frames)
            except WireError as exc:
                counts["rejected"] += 1
                log.warning("monitoring message rejected (%s): %s", exc.reason, exc)
                continue
            counts["messages"] += 1
            if len(batch.objects_hw) == 0:
                continue
            counts["events"] += len(batch.objects_hw)
            res = learner.observe(batch.objects_hw, run=batch.run, lumisection=batch.lumisection)
            if res is not None:
                counts["adaptations"] += 1
    return counts
