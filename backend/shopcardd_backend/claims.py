"""The claim use case: the gate decides in one atomic step, the voucher is signed, the answer built.

Nothing here decides stock or limits: the gate does, with the outbox event in the same
step. This module turns a decision into an answer (a signed voucher, or a refusal with its
reason).

A deal the store holds but the gate lost answers 503 (``deals.lost_deal``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from shopcardd_voucher import new_voucher_id

from .deals import lost_deal
from .events import ClaimsRefused, event_payload
from .gates.base import ClaimAttempt, ClaimDecision, ClaimGate, Outbox, Outcome, RateCount
from .identity import User
from .metrics import Metrics
from .ratelimits import ClaimRateLimits, RateLimited, Standing
from .signing import VoucherSigner
from .stores.base import DocumentStore

log = logging.getLogger("shopcardd_backend.claims")


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


REFUSALS_COUNTED: Final = frozenset({Outcome.SOLD_OUT, Outcome.LIMIT_REACHED, Outcome.SALE_NOT_OPEN})


class RefusalTally:
    """Refused claims counted in memory by deal, minute and outcome, for analytics.

    Refusals are most of a flash sale's traffic: one outbox event each would cost more than
    the claims. ``flush`` turns the counts into one ``claims.refused`` event per deal and minute
    (the API process calls it about once a second). A crash loses at most the counts since the
    last flush; issued claims are never counted here (their own events are exact)."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, int, str]] = Counter()
        self._lock = threading.Lock()

    def add(self, deal_id: str, now: float, outcome: Outcome) -> None:
        with self._lock:
            self._counts[deal_id, int(now) // 60 * 60, str(outcome)] += 1

    def flush(self, outbox: Outbox) -> int:
        """Write the counts as events; what cannot be written is kept for the next flush."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
        by_minute: dict[tuple[str, int], dict[str, int]] = {}
        for (deal_id, minute, outcome), n in counts.items():
            by_minute.setdefault((deal_id, minute), {})[outcome] = n
        written = 0
        for (deal_id, minute), tally in by_minute.items():
            event = ClaimsRefused(uuid.uuid4().hex, deal_id, minute, tally)
            try:
                outbox.add_event(deal_id, event_payload(event))
                written += 1
            except ConnectionError:
                with self._lock:
                    for outcome, n in tally.items():
                        self._counts[deal_id, minute, outcome] += n
        return written


class ClaimService:
    def __init__(
        self,
        gate: ClaimGate,
        outbox: Outbox,
        store: DocumentStore,
        signer: VoucherSigner,
        metrics: Metrics,
        rate_limits: ClaimRateLimits,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gate = gate
        self.outbox = outbox
        """Where the refusal tally is written (``refusals.flush``)."""
        self.store = store
        self.signer = signer
        self.metrics = metrics
        self.clock = clock
        self.rate_limits = rate_limits
        """Reads the counts of a claim's ``RateCount`` (``claim_async``'s ``standing``)."""
        self.refusals = RefusalTally()

    def claim(self, deal_id: str, user: User | str, idempotency_key: str) -> IssuedVoucher:
        """Claim one voucher of ``deal_id`` for ``user``; ``ClaimRefused`` when the gate says no."""
        started = time.perf_counter()
        try:
            decision = self.gate.claim(self._attempt(deal_id, user, idempotency_key))
            if decision.outcome is Outcome.UNKNOWN_DEAL:
                self._refuse_lost_deal(deal_id)
        except ConnectionError:
            self.metrics.claim_done("unavailable", time.perf_counter() - started)
            raise
        return self._answer(decision, deal_id, started)

    async def claim_async(
        self, deal_id: str, user: User | str, idempotency_key: str, standing: Standing = None
    ) -> IssuedVoucher:
        """``claim`` in the event loop, for the API: the gate's step awaited, no thread hop
        (only a deal the gate does not know asks the store, in a thread). ``standing``: the
        claim against the rate limits (``ClaimRateLimits.standing``). Over one already, or once
        the gate has counted its ``RateCount`` over one, only a claim already issued is
        answered; anything else raises the ``RateLimited``."""
        started = time.perf_counter()
        try:
            attempt = self._attempt(deal_id, user, idempotency_key, standing)
            decision = await self.gate.claim_async(attempt)
            if decision.outcome is Outcome.UNKNOWN_DEAL:
                await asyncio.to_thread(self._refuse_lost_deal, deal_id)
        except ConnectionError:
            self.metrics.claim_done("unavailable", time.perf_counter() - started)
            raise
        over = standing if isinstance(standing, RateLimited) else None
        if isinstance(standing, RateCount):
            over = self.rate_limits.verdict(standing, decision.hits)
        if decision.outcome is Outcome.RATE_LIMITED and over is not None:
            self.metrics.claim_done(decision.outcome, time.perf_counter() - started)
            raise over
        return self._answer(decision, deal_id, started)

    def _attempt(
        self, deal_id: str, user: User | str, idempotency_key: str, standing: Standing = None
    ) -> ClaimAttempt:
        user = user if isinstance(user, User) else User(user)
        return ClaimAttempt(
            deal_id,
            user.user_id,
            idempotency_key,
            new_voucher_id(),
            int(self.clock()),
            user.email,
            user.phone,
            replay_only=isinstance(standing, RateLimited),
            rate_count=standing if isinstance(standing, RateCount) else None,
        )

    def _refuse_lost_deal(self, deal_id: str) -> None:
        """A deal the gate does not know but the store holds was lost by the gate: 503."""
        if self.store.get_deal(deal_id) is not None:
            raise lost_deal(deal_id)

    def _answer(self, decision: ClaimDecision, deal_id: str, started: float) -> IssuedVoucher:
        """The signed voucher of an issued or replayed claim; ``ClaimRefused`` (counted) otherwise."""
        if decision.voucher is None or decision.outcome not in (Outcome.ISSUED, Outcome.REPLAYED):
            self.metrics.claim_done(decision.outcome, time.perf_counter() - started)
            if decision.outcome in REFUSALS_COUNTED:
                self.refusals.add(deal_id, self.clock(), decision.outcome)
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
