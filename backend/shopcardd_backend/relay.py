"""The relay: events from the claim gate's outbox to RabbitMQ, none lost, none left behind.

A relay leases a batch of events (``Outbox.lease_outbox``), publishes them with publisher
confirms, and only then acknowledges them in the outbox. A relay killed between publish and
acknowledge leaves its lease behind; once the lease runs out another relay (or the same one,
restarted) takes the events over and publishes them again. So an event may reach RabbitMQ
twice, never zero times, and the workers' handlers are idempotent. Several relays share the
outbox: each event is leased to one of them at a time.

An event of a type no queue is bound to (``BINDINGS``) could never be published: the broker
hands it back, and retrying cannot mend that. The relay parks it instead, as the in-process
pipeline does: an error log line ``event parked`` holding the whole event and the reason, and
the event leaves the outbox. The rest of its batch is published as usual.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from .events import event_type
from .gates.base import Outbox, OutboxEvent
from .loops import run_until_stopped
from .queue.base import BINDINGS, Publisher

log = logging.getLogger("shopcardd_backend.relay")
ROUTED_TYPES: Final = frozenset(kind for kinds in BINDINGS.values() for kind in kinds)
"""The event types some queue takes: the only ones the relay publishes."""


def consumer_name() -> str:
    """This relay's name in the outbox's leases: host and process, so a log can tell them apart."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(slots=True)
class RelayStats:
    published: int = 0
    parked: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)


class Relay:
    """Moves events from ``outbox`` to ``publisher``, batch by batch."""

    def __init__(
        self,
        outbox: Outbox,
        publisher: Publisher,
        *,
        consumer: str | None = None,
        batch_size: int = 500,
        lease_seconds: float = 30.0,
        idle_wait: float = 0.05,
    ) -> None:
        self.outbox = outbox
        self.publisher = publisher
        self.consumer = consumer or consumer_name()
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.idle_wait = idle_wait
        self.stats = RelayStats()
        self._in_hand: list[OutboxEvent] = []
        """A leased batch whose publish or acknowledgement failed: tried again first."""

    def relay_once(self) -> int:
        """Lease, publish and acknowledge one batch; the number of events that left the outbox
        (published, or parked because no queue takes their type)."""
        events = self._in_hand or self.outbox.lease_outbox(self.consumer, self.batch_size, self.lease_seconds)
        if not events:
            return 0
        self._in_hand = events
        routed = [event for event in events if event_type(event.payload) in ROUTED_TYPES]
        self.publisher.publish(routed)
        for event in events:
            if event_type(event.payload) not in ROUTED_TYPES:
                reason = f"no queue takes events of type {str(event.payload.get('type'))[:40]!r}"
                log.error("event parked", extra={"job": "relay", "reason": reason, "event": event.payload})
        self.outbox.ack_outbox([event.event_id for event in events])
        self._in_hand = []
        self.stats.published += len(routed)
        self.stats.parked += len(events) - len(routed)
        self.stats.batches += 1
        return len(events)

    def run(self, stop: threading.Event, on_batch: Callable[[int], None] | None = None) -> None:
        """Relay until ``stop`` is set; a batch in hand is finished first. While the gate or the
        broker is down, wait with backoff (logged once per outage) and go on."""
        log.info("relay started", extra={"consumer": self.consumer})
        run_until_stopped(self.relay_once, stop, what="relay", idle_wait=self.idle_wait, on_progress=on_batch)
        log.info("relay stopped", extra={"consumer": self.consumer, "published": self.stats.published})
