"""A subscriber to the collector's monitoring tap (a PUB socket), for the tap's consumers.

The tap publishes ``[topic, *wire.encode_results(ResultBatch)]``: topic ``wire.TOPIC_MONITOR``
(sampled batches with every event's objects, for DQM) and ``wire.TOPIC_ZERO_BIAS`` (accepted
zero-bias events, for the continual learner). ``TapSubscriber.messages`` yields the frames after
the topic of each message of its topic; decoding (and counting what fails) is the consumer's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
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
        self, stop: threading.Event, *, poll_ms: int = 100, drain: bool = False
    ) -> Iterator[list[Any]]:
        """The frames after the topic of every message of this topic until ``stop`` is set;
        with ``drain`` the messages already queued then are taken before returning."""
        while True:
            stopping = stop.is_set()
            if stopping and not drain:
                return
            if not self.socket.poll(0 if stopping else poll_ms):
                if stopping:
                    return
                continue
            frames = self.socket.recv_multipart(copy=False)
            if frames[0].bytes == self.topic:
                yield frames[1:]

    def close(self) -> None:
        self.socket.close(0)

    def __enter__(self) -> TapSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
