"""The persist worker: each issued voucher into the document store, once, in batches.

Idempotent by the voucher's id (``_id`` in MongoDB): a redelivered batch finds its vouchers
stored the same way and changes nothing. A voucher stored *otherwise* (another voucher holds
its id or its claim) cannot be mended by a retry: it is parked for an operator to look at.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..events import CLAIM_ISSUED, ClaimIssued, Event
from ..stores.base import DocumentStore
from .base import DONE, Result, Verdict


class PersistHandler:
    name = "persist"
    event_types = (CLAIM_ISSUED,)

    def __init__(self, store: DocumentStore, batch_size: int = 500) -> None:
        self.store = store
        self.batch_size = batch_size

    def handle(self, events: Sequence[Event]) -> list[Result]:
        claims = [event for event in events if isinstance(event, ClaimIssued)]
        differing = set(self.store.save_vouchers([event.record() for event in claims]))
        conflict = Result(Verdict.PARK, "another voucher is stored under this voucher id or claim")
        return [
            conflict if isinstance(event, ClaimIssued) and event.voucher_id in differing else DONE
            for event in events
        ]

    def close(self) -> None:
        """The store belongs to the runtime, which closes it."""
