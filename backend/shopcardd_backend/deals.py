"""The deal use cases: start a sale, read it with its stock, list, cancel, rebuild a lost one.

The routes (``api/routes/deals.py``) and the commands (``shopcardd-backend deal ...``) are
thin adapters over ``DealService``; the rules live here once. The gate holds what claims need
(terms, stock, counters), the store holds the deal's record; the gate is written first, so a
failure between the two leaves an unreachable gate entry (harmless) rather than a stored deal
the gate never got.

A deal the store holds but the gate does not (a Redis that restarted without its data) is
never restored behind the operator's back: claims, reads and cancels of it answer 503
(``lost_deal``) until ``shopcardd-backend deal rebuild`` loads it again from the vouchers the
store holds plus the claim events still waiting in the outbox.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from shopcardd_voucher import Voucher

from .events import ClaimIssued, parse_event
from .gates.base import ClaimGate, DealTerms, GateUnavailable, Outbox
from .stores.base import (
    DealPage,
    DealRecord,
    DealStatus,
    DocumentStore,
    DuplicateError,
    RevocationKind,
    VoucherRecord,
)

log = logging.getLogger("shopcardd_backend.deals")
ID_ATTEMPTS = 5
LOST_DEAL_RETRY = 60
"""Seconds a client waits before retrying a use of a deal the gate lost: an operator must act."""


class DealNotFound(LookupError):
    """No deal of that id in the store."""


class RebuildRefused(Exception):
    """A rebuild that could sell vouchers again, refused; ``str(exc)`` says why and what to do."""


class NotYourDeal(PermissionError):
    """The deal belongs to another merchant."""


class DealPhase(StrEnum):
    """Where a sale stands, as a merchant and a customer see it (the store keeps only whether
    it was cancelled; the rest follows from the clock and the stock left)."""

    SCHEDULED = "scheduled"
    ACTIVE = "active"
    SOLD_OUT = "sold_out"
    ENDED = "ended"
    CANCELLED = "cancelled"


def deal_phase(deal: DealRecord, stock_left: int | None, now: datetime) -> DealPhase:
    """Cancelled first, then ended, then scheduled, then sold out (a deal the gate lost, stock
    unknown, shows by its times alone)."""
    if deal.status is DealStatus.CANCELLED:
        return DealPhase.CANCELLED
    if deal.ends_at is not None and now >= deal.ends_at:
        return DealPhase.ENDED
    if deal.starts_at is not None and now < deal.starts_at:
        return DealPhase.SCHEDULED
    if stock_left == 0:
        return DealPhase.SOLD_OUT
    return DealPhase.ACTIVE


@dataclass(frozen=True, slots=True)
class DealView:
    """A deal as its readers see it: the stored record, the vouchers left in the gate (None in a
    list, for a deal the gate lost) and its phase when it was read."""

    deal: DealRecord
    stock_left: int | None
    phase: DealPhase


@dataclass(frozen=True, slots=True)
class RebuildReport:
    """What ``rebuild`` did; ``rebuilt`` is False when the gate still held the deal (left alone)."""

    deal_id: str
    stock_left: int
    rebuilt: bool
    in_store: int = 0
    in_outbox_only: int = 0


def new_deal_id() -> str:
    """48 random bits in 8 characters: short ids keep vouchers (and their QR codes) small. Never
    starting with ``-``, which a command line would read as an option (``deal rebuild -x...``)."""
    while (deal_id := secrets.token_urlsafe(6)).startswith("-"):
        pass
    return deal_id


def epoch(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def terms_of(deal: DealRecord) -> DealTerms:
    return DealTerms(
        deal_id=deal.deal_id,
        merchant_id=deal.merchant_id,
        stock=deal.stock,
        per_user_limit=deal.per_user_limit,
        voucher_ttl_seconds=deal.voucher_ttl_seconds,
        starts_at=epoch(deal.starts_at),
        ends_at=epoch(deal.ends_at),
        cancelled=deal.status is DealStatus.CANCELLED,
    )


def lost_deal(deal_id: str) -> GateUnavailable:
    """The error for a deal the store holds and the gate lost (logged): 503, retry in a minute."""
    log.error(
        "deal is in the store but missing from the claim gate; run `shopcardd-backend deal rebuild`",
        extra={"deal_id": deal_id},
    )
    return GateUnavailable(f"deal {deal_id} is missing from the claim gate", retry_after=LOST_DEAL_RETRY)


def voucher_of(record: VoucherRecord) -> Voucher:
    return Voucher(
        voucher_id=record.voucher_id,
        deal=record.deal_id,
        user=record.user_id,
        merchant=record.merchant_id,
        issued_at=int(record.issued_at.timestamp()),
        expires_at=int(record.expires_at.timestamp()),
    )


class DealService:
    def __init__(
        self,
        gate: ClaimGate,
        outbox: Outbox,
        store: DocumentStore,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        queue_backlog: Callable[[], int] = lambda: 0,
    ) -> None:
        self.gate = gate
        self.outbox = outbox
        self.store = store
        self.now = now
        self.queue_backlog = queue_backlog
        """Claim events relayed but not yet persisted (``Runtime.queue_backlog``): ``rebuild``
        refuses while there are any, since they may be the lost deal's."""

    def create(self, merchant_id: str, **terms: Any) -> DealView:
        """Start a sale; ``terms`` are the fields of ``DealRecord`` a merchant chooses."""
        for _ in range(ID_ATTEMPTS):
            deal = DealRecord(
                deal_id=new_deal_id(),
                merchant_id=merchant_id,
                status=DealStatus.ACTIVE,
                created_at=self.now(),
                **terms,
            )
            if self.store.get_deal(deal.deal_id) is not None:
                continue
            self.gate.load_deal(terms_of(deal))
            try:
                self.store.add_deal(deal)
            except DuplicateError:
                continue
            log.info(
                "deal created",
                extra={"deal_id": deal.deal_id, "merchant_id": merchant_id, "stock": deal.stock},
            )
            return DealView(deal, deal.stock, deal_phase(deal, deal.stock, self.now()))
        raise GateUnavailable("could not find a free deal id; retry", retry_after=1)

    def get(self, deal_id: str) -> DealView:
        """The deal with the gate's stock left; ``DealNotFound``, or 503 for a lost deal."""
        return self._view(self._stored(deal_id))

    def list(self, merchant_id: str, limit: int, after: str | None = None) -> DealPage:
        """The merchant's deals, newest first; ``after`` is the previous page's cursor."""
        return self.store.deals_of_merchant(merchant_id, limit, after)

    def list_views(
        self, merchant_id: str, limit: int, after: str | None = None
    ) -> tuple[list[DealView], str | None]:
        """A page of the merchant's deals with their stock left and phase, and the next cursor."""
        page, now = self.store.deals_of_merchant(merchant_id, limit, after), self.now()
        views = []
        for deal in page.deals:
            left = self.gate.stock_left(deal.deal_id)
            views.append(DealView(deal, left, deal_phase(deal, left, now)))
        return views, page.next_cursor

    def cancel(self, deal_id: str, merchant_id: str) -> DealView:
        """Close the sale (every later claim is ``sale_not_open``) and revoke its vouchers (every
        counter refuses them after its next sync); repeating it is harmless.

        On a deal the gate lost, the cancellation is still recorded in the store (``rebuild``
        loads the deal cancelled) and the answer is 503, as for any other use of that deal."""
        deal = self._stored(deal_id)
        if deal.merchant_id != merchant_id:
            raise NotYourDeal(f"deal {deal_id!r} belongs to another merchant")
        cancelled = self.store.set_deal_status(deal_id, DealStatus.CANCELLED) or deal
        self.store.add_revocation(merchant_id, RevocationKind.DEAL, deal_id, self.now())
        self.gate.cancel(deal_id)
        log.info("deal cancelled", extra={"deal_id": deal_id, "merchant_id": merchant_id})
        return self._view(cancelled)

    def claimed_vouchers(self, deal_id: str) -> tuple[dict[str, tuple[str, Voucher]], int]:
        """Every voucher issued on the deal that the backend still knows of: the store's, plus
        the claim events still in the outbox (not yet persisted). Returns them by voucher id,
        with how many came from the outbox alone."""
        claimed = {
            v.voucher_id: (v.idempotency_key, voucher_of(v)) for v in self.store.vouchers_of_deal(deal_id)
        }
        from_outbox = 0
        for item in self.outbox.read_outbox(limit=None, deal_id=deal_id):
            event = parse_event(item.payload)
            if isinstance(event, ClaimIssued) and event.voucher_id not in claimed:
                claimed[event.voucher_id] = (event.idempotency_key, event.voucher())
                from_outbox += 1
        return claimed, from_outbox

    def rebuild(self, deal_id: str, force: bool = False) -> RebuildReport:
        """Load a deal the gate lost back into it, with every voucher issued on it.

        An operator's act (``shopcardd-backend deal rebuild``): stock left = stock - vouchers,
        per-user counts and replays from them, cancelled if the store says so. A deal the gate
        still holds is left alone: its counters are the truth. ``RebuildRefused`` while claim
        events wait in the queue for the persist worker (they may be this deal's vouchers, and
        a rebuild without them would sell them again), unless ``force``."""
        deal = self._stored(deal_id)
        held = self.gate.stock_left(deal_id)
        if held is not None:
            return RebuildReport(deal_id, held, rebuilt=False)
        claimed, from_outbox = self.claimed_vouchers(deal_id)
        waiting = 0 if force else self.queue_backlog()
        if waiting:
            raise RebuildRefused(
                f"deal {deal_id} is missing from the claim gate; the store and the outbox hold "
                f"{len(claimed)} of its vouchers ({from_outbox} still in the outbox), but "
                f"{waiting} claim events wait in the persist queue and may be of this deal: "
                "not rebuilt; rerun once the persist worker has drained the queue, or with "
                "--force"
            )
        self.gate.load_deal(terms_of(deal), claimed=list(claimed.values()))
        if deal.status is not DealStatus.CANCELLED:
            # A cancel that ran while we loaded found no deal in the gate to close (it answered
            # 503): the store has it, so close it now.
            again = self.store.get_deal(deal_id)
            if again is not None and again.status is DealStatus.CANCELLED:
                self.gate.cancel(deal_id)
        log.warning(
            "deal rebuilt in the claim gate",
            extra={"deal_id": deal_id, "vouchers": len(claimed), "from_outbox": from_outbox},
        )
        left = self.gate.stock_left(deal_id)
        return RebuildReport(
            deal_id, 0 if left is None else left, True, len(claimed) - from_outbox, from_outbox
        )

    def _stored(self, deal_id: str) -> DealRecord:
        deal = self.store.get_deal(deal_id)
        if deal is None:
            raise DealNotFound(f"no deal {deal_id[:100]!r}")
        return deal

    def _view(self, deal: DealRecord) -> DealView:
        left = self.gate.stock_left(deal.deal_id)
        if left is None:
            raise lost_deal(deal.deal_id)
        return DealView(deal, left, deal_phase(deal, left, self.now()))
