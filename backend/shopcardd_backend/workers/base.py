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

Any other error is a handler failing on something in the batch (one poison event). Both runners
call the handler through ``handle_batch``, which then handles the batch's events one at a time:
the others are done, and only the event the handler fails on alone is ``retry``, so that it,
and it only, is parked at the delivery limit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ..events import Event
from ..storage import TransientError

log = logging.getLogger("shopcardd_backend.workers")


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


def handle_batch(handler: EventHandler, events: Sequence[Event]) -> list[Result]:
    """``handler``'s results for ``events``, one event at a time after the batch failed (see the
    module's docstring). ``TransientError`` is raised, whole: the dependency is down for all."""
    try:
        results = handler.handle(events)
        if len(results) != len(events):
            raise RuntimeError(f"{handler.name} answered {len(results)} results for {len(events)} events")
        return results
    except TransientError:
        raise
    except Exception as exc:
        if len(events) != 1:
            log.exception(
                "handler failed on a batch; handling its events one at a time",
                extra={"job": handler.name, "events": len(events)},
            )
            return [result for event in events for result in handle_batch(handler, [event])]
        reason = f"{handler.name} failed on this event: {exc!r}"
        where = {"job": handler.name, "event_id": events[0].event_id, "reason": reason}
        log.error("handler failed on an event; it comes back until the delivery limit parks it", extra=where)
        return [Result(Verdict.RETRY, reason)]
