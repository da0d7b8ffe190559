"""The analytics worker: each deal's claims by minute, issued and refused by outcome.

Each event becomes one ``ClaimTally`` stored under the event's id (a ``claim.issued`` event
counts one voucher in the minute of its ``issued_at``; a ``claims.refused`` event carries an
API process's refusals of one deal and minute), and the store sums them when asked
(``claims_by_minute``). A redelivered event finds its tally already stored and adds nothing:
the counts are exact, not approximate.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from ..events import CLAIM_ISSUED, CLAIMS_REFUSED, ClaimIssued, Event
from ..stores.base import ClaimTally, DocumentStore
from .base import DONE, Result


def minute_of(epoch_seconds: int) -> datetime:
    return datetime.fromtimestamp(epoch_seconds // 60 * 60, UTC)


def tally_of(event: Event) -> ClaimTally:
    """What one event adds to its deal's statistics."""
    if isinstance(event, ClaimIssued):
        return ClaimTally(event.event_id, event.deal_id, minute_of(event.issued_at), issued=1)
    return ClaimTally(event.event_id, event.deal_id, minute_of(event.minute), **event.counts)


class AnalyticsHandler:
    name = "analytics"
    event_types = (CLAIM_ISSUED, CLAIMS_REFUSED)

    def __init__(self, store: DocumentStore, batch_size: int = 500) -> None:
        self.store = store
        self.batch_size = batch_size

    def handle(self, events: Sequence[Event]) -> list[Result]:
        """One write for the batch; a store that does not answer raises (the batch comes back)."""
        self.store.add_claim_tallies([tally_of(event) for event in events])
        return [DONE] * len(events)

    def close(self) -> None:
        """The store belongs to the runtime, which closes it."""
