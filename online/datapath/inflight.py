"""The dispatcher's bookkeeping: connected workers, batches in flight, pending broadcasts.

Plain records, owned and mutated only by the dispatcher's loop thread (``Broadcast.done`` is how
another thread waits for an answer). Imports nothing of l1forge.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class WorkerRecord:
    """A connected worker: its credits and the batches it holds."""

    ident: bytes
    name: str
    pid: int
    host: str
    credits: int
    last_seen: float
    configured: bool = False
    inflight: set[int] = field(default_factory=set)
    n_done: int = 0
    n_sent: int = 0
    n_bad: int = 0


@dataclass
class InFlightBatch:
    """A batch sent and not yet acknowledged by the collector (kept for redelivery)."""

    first_seq: int
    n_events: int
    frames: list  # wire frames of the batch (zmq.Frame, re-sendable)
    t_source: float
    worker: bytes | None
    attempts: int = 0
    avoid: set[bytes] = field(default_factory=set)  # workers whose result was unreadable


@dataclass
class Broadcast:
    """A set_model / set_menu / swap sent to every worker, waiting for their answers."""

    token: int
    frames: list
    waiting: set[bytes]
    answers: dict[str, dict] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
