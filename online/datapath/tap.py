"""A subscriber to the collector's monitoring tap (a PUB socket), for the tap's consumers.

The tap publishes ``[topic, *wire.encode_results(ResultBatch)]``: topic ``wire.TOPIC_MONITOR``
(sampled batches with every event's objects, for DQM) and ``wire.TOPIC_ZERO_BIAS`` (accepted
zero-bias events, for the continual learner). ``TapSubscriber.messages`` yields the frames after
the topic of each message of its topic; decoding (and counting what fails) is the consumer's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq

from l1forge.online.security import CurveKeys, connect_client


class TapSubscriber:
    """A SUB socket on one topic of the tap at ``endpoint``; close it (or use ``with``)."""

    def __init__(
        self,
        endpoint: str,
        topic: bytes,
        *,
        context: zmq.Context | None = None,
        keys: str | Path | CurveKeys | None = None,
        rcvhwm: int | None = None,
    ):
        self.endpoint = endpoint
        self.topic = topic
        ctx = context or zmq.Context.instance()
        self.socket = ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        if rcvhwm is not None:
            self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        try:
            connect_client(self.socket, endpoint, keys)
            self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        except BaseException:
            self.socket.close(0)
            raise

    def messages(
        self,
        stop: threading.Event,
        *,
        poll_ms: int = 100,
        drain: bool = False,
        pending: Callable[[], bool] | None = None,
        idle_s: float = 2.0,
    ) -> Iterator[list[Any]]:
        """The frames after the topic of every message of this topic until ``stop`` is set.

        With ``drain`` the messages already queued then are taken before returning; with
        ``pending`` as well, the subscriber keeps waiting while ``pending()`` is true for
        messages still on their way, until ``idle_s`` pass without one.
        """
        idle_since = 0.0
        while True:
            stopping = stop.is_set()
            if stopping and not drain:
                return
            waiting = stopping and pending is not None and pending()
            if not self.socket.poll(0 if stopping and not waiting else poll_ms):
                if not stopping:
                    continue
                if not waiting:
                    return
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > idle_s:
                    return
                continue
            idle_since = 0.0
            frames = self.socket.recv_multipart(copy=False)
            if frames[0].bytes == self.topic:
                yield frames[1:]

    def close(self) -> None:
        self.socket.close(0)

    def __enter__(self) -> TapSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
