"""The analytics worker: each deal's refused claims by minute and outcome.

A ``claims.refused`` event carries an API process's refusals of one deal and minute; each
becomes one ``ClaimTally`` stored under the event's id, and the store sums them when asked
(``claims_by_minute``). A redelivered event finds its tally already stored and adds nothing:
the counts are exact, not approximate.

Claims issued are not counted here: each is a voucher the persist worker stores, and the
store counts those by minute. A document and a queue message of their own per issued claim
held the whole pipeline back in a flash sale (``shopcardd-bench pipeline --rates``:
docs/performance.md). ``claim.issued`` events left in this worker's queue by a version that
counted them here are taken and dropped, not parked.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from ..events import CLAIM_ISSUED, CLAIMS_REFUSED, ClaimsRefused, Event
from ..stores.base import ClaimTally, DocumentStore
from .base import DONE, Result


def minute_of(epoch_seconds: int) -> datetime:
    return datetime.fromtimestamp(epoch_seconds // 60 * 60, UTC)


def tally_of(event: ClaimsRefused) -> ClaimTally:
    """What one event of refusals adds to its deal's statistics."""
    return ClaimTally(event.event_id, event.deal_id, minute_of(event.minute), **event.counts)


class AnalyticsHandler:
    name = "analytics"
    event_types = (CLAIMS_REFUSED, CLAIM_ISSUED)
    """``claim.issued``: accepted and dropped (see the module's docstring)."""

    def __init__(self, store: DocumentStore, batch_size: int = 500) -> None:
        self.store = store
        self.batch_size = batch_size

    def handle(self, events: Sequence[Event]) -> list[Result]:
        """One write for the batch; a store that does not answer raises (the batch comes back)."""
        refusals = [tally_of(event) for event in events if isinstance(event, ClaimsRefused)]
        self.store.add_claim_tallies(refusals)
        return [DONE] * len(events)

    def close(self) -> None:
        """The store belongs to the runtime, which closes it."""
