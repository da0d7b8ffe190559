"""The queue port: how events leave the backend's outbox, and the names of the topology.

``Publisher`` is what the relay (``relay.py``) needs: publish a batch, return only once the
broker has taken responsibility for every event (publisher confirms), or raise. Adapter:
``rabbitmq.py``. The embedded profile has no broker at all: ``inprocess.py`` hands the
outbox's events straight to the handlers.

The topology (fixed names: docs/architecture.md): a topic exchange ``shopcardd.events`` routes
each event by its ``type``; one durable quorum queue per job (``shopcardd.persist``,
``shopcardd.notify``, ``shopcardd.analytics``), each with a delivery limit and a dead-letter
route (through the exchange ``shopcardd.parked``) to its own ``.parked`` queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

from ..events import CLAIM_ISSUED, CLAIMS_REFUSED
from ..gates.base import OutboxEvent
from ..storage import TransientError

EXCHANGE: Final = "shopcardd.events"
PARKED_EXCHANGE: Final = "shopcardd.parked"
BINDINGS: Final[dict[str, tuple[str, ...]]] = {
    "persist": (CLAIM_ISSUED,),
    "notify": (CLAIM_ISSUED,),
    "analytics": (CLAIMS_REFUSED,),
}
"""Each job's queue and the event types (routing keys) it receives."""
RETIRED_BINDINGS: Final[dict[str, tuple[str, ...]]] = {"analytics": (CLAIM_ISSUED,)}
"""Bindings earlier versions declared, removed where found: the analytics worker counted each
issued claim; the vouchers stored count them now (``workers/analytics.py``)."""
DELIVERY_LIMIT: Final = 5
"""Deliveries of one message after which it is parked instead of retried again."""


def queue_name(job: str) -> str:
    return f"shopcardd.{job}"


def parked_queue_name(job: str) -> str:
    return f"shopcardd.{job}.parked"


class QueueUnavailable(TransientError):
    """The broker cannot be reached, or did not confirm; the caller retries later."""


class Publisher(Protocol):
    def publish(self, events: Sequence[OutboxEvent]) -> None:
        """Publish every event as a persistent message; returns once the broker confirmed all
        of them. Raises ``QueueUnavailable`` otherwise (some may have been published: the
        caller publishes them again, and the handlers are idempotent)."""

    def close(self) -> None: ...
