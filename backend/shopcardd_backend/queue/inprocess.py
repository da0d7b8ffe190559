"""The queue of a backend without RabbitMQ: the outbox's events handed straight to the handlers.

When ``SHOPCARDD_AMQP_URL`` is not set (the embedded profile), each API process runs this in a
background thread: it leases a batch from the outbox, as a relay does, and gives every handler
(persist, notify, analytics) the events it takes. An event leaves the outbox once every handler
is done with it (or parked it); an event a handler asked to retry stays leased and comes back
when the lease runs out, for every handler again (they are idempotent). After
``DELIVERY_LIMIT`` tries it is parked, as the broker would: here parking is an error log line
holding the whole event, since there is no parking queue.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..events import BadEvent, Event, parse_event
from ..gates.base import Outbox, OutboxEvent
from ..workers.base import EventHandler, Verdict, handle_batch
from .base import DELIVERY_LIMIT

log = logging.getLogger("shopcardd_backend.queue")


class InProcessPipeline:
    def __init__(
        self,
        outbox: Outbox,
        handlers: Sequence[EventHandler],
        consumer: str,
        *,
        batch_size: int = 200,
        lease_seconds: float = 5.0,
        delivery_limit: int = DELIVERY_LIMIT,
    ) -> None:
        self.outbox = outbox
        self.handlers = list(handlers)
        self.consumer = consumer
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.delivery_limit = delivery_limit
        self._tries: dict[str, int] = {}

    def run_once(self) -> int:
        """Handle one leased batch; the number of events that left the outbox."""
        leased = self.outbox.lease_outbox(self.consumer, self.batch_size, self.lease_seconds)
        if not leased:
            return 0
        finished: list[str] = []
        events: dict[str, Event] = {}
        for item in leased:
            try:
                events[item.event_id] = parse_event(item.payload)
            except BadEvent as exc:
                self._park(item, "all", str(exc))
                finished.append(item.event_id)
        retry: dict[str, str] = {}
        """Events a handler asked to retry, with its reason (said when the event is parked)."""
        for handler in self.handlers:
            mine = [(outbox_id, e) for outbox_id, e in events.items() if e.type in handler.event_types]
            for start in range(0, len(mine), handler.batch_size):
                chunk = mine[start : start + handler.batch_size]
                results = handle_batch(handler, [e for _, e in chunk])
                for (outbox_id, _), result in zip(chunk, results, strict=True):
                    if result.verdict is Verdict.RETRY:
                        retry[outbox_id] = result.reason
                    elif result.verdict is Verdict.PARK:
                        self._park(_leased(leased, outbox_id), handler.name, result.reason)
        for outbox_id in events:
            if outbox_id not in retry:
                finished.append(outbox_id)
                self._tries.pop(outbox_id, None)
                continue
            self._tries[outbox_id] = tries = self._tries.get(outbox_id, 0) + 1
            if tries >= self.delivery_limit:
                reason = f"still failing after {tries} tries: {retry[outbox_id]}"
                self._park(_leased(leased, outbox_id), "retries", reason)
                finished.append(outbox_id)
                self._tries.pop(outbox_id, None)
        self.outbox.ack_outbox(finished)
        return len(finished)

    def _park(self, item: OutboxEvent, job: str, reason: str) -> None:
        log.error("event parked", extra={"job": job, "reason": reason, "event": item.payload})

    def close(self) -> None:
        for handler in self.handlers:
            handler.close()


def _leased(leased: Sequence[OutboxEvent], outbox_id: str) -> OutboxEvent:
    return next(item for item in leased if item.event_id == outbox_id)
