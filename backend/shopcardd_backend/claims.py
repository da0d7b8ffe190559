"""The claim use case: the gate decides in one atomic step, the voucher is signed, the answer built.

Nothing here decides stock or limits: the gate does, with the outbox event in the same
step. This module turns a decision into an answer (a signed voucher, or a refusal with its
reason).

A deal the store holds but the gate does not (a Redis that restarted without its data) is
never restored behind the operator's back: the store may not yet hold every voucher the gate
issued (events still in the outbox or the queue), and a restore from an undercount would
sell more than the stock. Claims on it (and reads and cancels of it, see ``lost_deal``) answer
503 until an operator runs ``shopcardd-backend deal rebuild DEAL --force``, once the outbox and
the persist worker have drained.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from shopcardd_voucher import Voucher, new_voucher_id

from .gates.base import ClaimAttempt, ClaimDecision, ClaimGate, DealTerms, GateUnavailable, Outcome
from .metrics import Metrics
from .signing import VoucherSigner
from .stores.base import DealRecord, DealStatus, DocumentStore, VoucherRecord

log = logging.getLogger("shopcardd_backend.claims")
LOST_DEAL_RETRY = 60
"""Seconds a client waits before retrying a claim on a deal the gate lost: an operator must act."""


class ClaimRefused(Exception):
    """The gate said no; ``outcome`` is why (sold out, limit reached, sale not open, unknown deal)."""

    def __init__(self, outcome: Outcome, deal_id: str) -> None:
        super().__init__(f"{outcome} for deal {deal_id}")
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class IssuedVoucher:
    voucher_id: str
    token: str
    deal_id: str
    merchant_id: str
    expires_at: datetime
    replayed: bool
    """True when the same user and idempotency key claimed before: the same voucher again."""


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


class ClaimService:
    def __init__(
        self,
        gate: ClaimGate,
        store: DocumentStore,
        signer: VoucherSigner,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gate = gate
        self.store = store
        self.signer = signer
        self.metrics = metrics
        self.clock = clock

    def claim(self, deal_id: str, user_id: str, idempotency_key: str) -> IssuedVoucher:
        """Claim one voucher of ``deal_id`` for ``user_id``; ``ClaimRefused`` when the gate says no."""
        started = time.perf_counter()
        try:
            decision = self._decide(deal_id, user_id, idempotency_key)
        except ConnectionError:
            self.metrics.claim_done("unavailable", time.perf_counter() - started)
            raise
        if decision.voucher is None or decision.outcome not in (Outcome.ISSUED, Outcome.REPLAYED):
            self.metrics.claim_done(decision.outcome, time.perf_counter() - started)
            raise ClaimRefused(decision.outcome, deal_id)
        voucher = decision.voucher
        issued = IssuedVoucher(
            voucher_id=voucher.voucher_id,
            token=self.signer.sign(voucher),
            deal_id=voucher.deal,
            merchant_id=voucher.merchant,
            expires_at=datetime.fromtimestamp(voucher.expires_at, UTC),
            replayed=decision.outcome is Outcome.REPLAYED,
        )
        self.metrics.claim_done(decision.outcome, time.perf_counter() - started)
        return issued

    def _decide(self, deal_id: str, user_id: str, idempotency_key: str) -> ClaimDecision:
        attempt = ClaimAttempt(deal_id, user_id, idempotency_key, new_voucher_id(), int(self.clock()))
        decision = self.gate.claim(attempt)
        if decision.outcome is Outcome.UNKNOWN_DEAL and self.store.get_deal(deal_id) is not None:
            raise lost_deal(deal_id)
        return decision


def lost_deal(deal_id: str) -> GateUnavailable:
    """The error for a deal the store holds and the gate lost (logged): 503, retry in a minute.
    Claims, reads and cancels of it all answer so; nothing is invented for it (no stock)."""
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


def rebuild_deal(gate: ClaimGate, store: DocumentStore, deal_id: str) -> int | None:
    """Load a deal into the gate from the store, with every voucher the store has recorded.

    An operator's act (``shopcardd-backend deal rebuild``), for a gate that lost its data:
    run it once the outbox and the persist worker have drained, so the store's count of
    vouchers is complete (the command refuses without ``--force``). Returns the stock left, or
    None when the store has no such deal. A deal the gate still holds is left alone: its
    counters are the truth. A deal cancelled in the store is loaded cancelled, atomically.
    """
    deal = store.get_deal(deal_id)
    if deal is None:
        return None
    left = gate.stock_left(deal_id)
    if left is not None:
        return left
    claimed = [(v.idempotency_key, voucher_of(v)) for v in store.vouchers_of_deal(deal_id)]
    # A deal cancelled in the store is loaded cancelled, in the load's own atomic step.
    gate.load_deal(terms_of(deal), claimed=claimed)
    if deal.status is not DealStatus.CANCELLED:
        # A cancel that ran while we loaded found no deal in the gate to close (it answered
        # 503): the store has it, so close it now.
        again = store.get_deal(deal_id)
        if again is not None and again.status is DealStatus.CANCELLED:
            gate.cancel(deal_id)
    log.warning("deal rebuilt in the claim gate", extra={"deal_id": deal_id, "vouchers": len(claimed)})
    return gate.stock_left(deal_id)
