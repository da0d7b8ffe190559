"""The worker port: a handler does one job (persist, notify, analytics) for a batch of events.

A handler knows nothing of RabbitMQ: the same handler runs under RabbitMQ's consumer
(``consume`` in ``queue/rabbitmq.py``: pika, manual acks, dead-lettering) and in-process in
the embedded profile (``queue/inprocess.py``: straight from the SQLite outbox). It answers one
``Result`` per event, in order:

- ``done``: the work is durable (or was already done: handlers are idempotent); ack it.
- ``retry``: a transient failure of this event (an SMTP server that said "try later"); it comes
  back later, and is parked after a bounded number of deliveries.
- ``park``: a final failure (a recipient the SMTP server refuses); never retried, parked with
  the reason.

A failure of the handler's own dependency, for every event alike (the store does not answer),
is raised as a ``TransientError`` instead: RabbitMQ's consumer keeps the batch, backs off and tries the
whole batch again, without counting it against the events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ..events import Event


class Verdict(StrEnum):
    DONE = "done"
    RETRY = "retry"
    PARK = "park"


@dataclass(frozen=True, slots=True)
class Result:
    verdict: Verdict
    reason: str = ""
    """Why, for the log line and the parked message (empty when done)."""


DONE = Result(Verdict.DONE)


class EventHandler(Protocol):
    name: str
    """The job, and the queue's name after ``shopcardd.``: ``persist``, ``notify``, ``analytics``."""
    event_types: tuple[str, ...]
    """The event types it wants (the queue's bindings); other events are not given to it."""
    batch_size: int
    """How many events it takes at once (persist writes a batch in one round trip)."""

    def handle(self, events: Sequence[Event]) -> list[Result]:
        """One ``Result`` per event, in order; raises ``TransientError`` when its dependency is down."""
        ...

    def close(self) -> None: ...
