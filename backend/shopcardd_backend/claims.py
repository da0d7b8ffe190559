"""The claim use case: who claims, against the rate limits, the gate's one atomic step, the answer.

Nothing here decides stock or limits: the gate does, with the outbox event in the same
step. This module keeps the order of the checks around it (the rate limits before the token's
signature, the claim step and the voucher's signature) and turns a decision into a
``ClaimResult`` (a signed voucher, or the outcome that refused it); the routes only map
outcomes to HTTP.

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
from enum import StrEnum
from typing import Final

from shopcardd_voucher import new_voucher_id

from .deals import lost_deal
from .events import ClaimsRefused, event_payload
from .gates.base import ClaimAttempt, ClaimDecision, ClaimGate, Outbox, Outcome, RateCount
from .identity import API_KEY_PREFIX, Unauthorized, User, UserTokenVerifier
from .metrics import Metrics
from .ratelimits import ClaimRateLimits, OverLimit, Standing
from .signing import VoucherSigner
from .stores.base import DocumentStore

log = logging.getLogger("shopcardd_backend.claims")


@dataclass(frozen=True, slots=True)
class IssuedVoucher:
    voucher_id: str
    token: str
    deal_id: str
    merchant_id: str
    expires_at: datetime
    replayed: bool
    """True when the same user and idempotency key claimed before: the same voucher again."""


class ClaimOutcome(StrEnum):
    """What a claim request got: the gate's outcomes, and UNAUTHORIZED for a token refused
    before the gate was asked."""

    ISSUED = Outcome.ISSUED.value
    REPLAYED = Outcome.REPLAYED.value
    SOLD_OUT = Outcome.SOLD_OUT.value
    LIMIT_REACHED = Outcome.LIMIT_REACHED.value
    SALE_NOT_OPEN = Outcome.SALE_NOT_OPEN.value
    UNKNOWN_DEAL = Outcome.UNKNOWN_DEAL.value
    RATE_LIMITED = Outcome.RATE_LIMITED.value
    """Over a claim rate limit (``ClaimResult.over`` says which) and no replay."""
    UNAUTHORIZED = "unauthorized"
    """No valid user token (``ClaimResult.reason`` says why)."""


@dataclass(frozen=True, slots=True)
class ClaimResult:
    outcome: ClaimOutcome
    voucher: IssuedVoucher | None = None
    """Set for ISSUED and REPLAYED."""
    over: OverLimit | None = None
    """Set for RATE_LIMITED."""
    reason: str = ""
    """Why UNAUTHORIZED."""


_OUTCOME_OF: Final = {outcome: ClaimOutcome(outcome.value) for outcome in Outcome}
_REFUSED: Final = {outcome: ClaimResult(_OUTCOME_OF[outcome]) for outcome in Outcome}
"""The result of each refusal of the gate, made once (a flash sale is mostly refusals)."""

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
        users: UserTokenVerifier,
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
        self.users = users
        self.refusals = RefusalTally()

    async def claim(self, deal_id: str, token: str, idempotency_key: str, address: str | None) -> ClaimResult:
        """One claim request of the API: the user's bearer ``token``, from client ``address``.

        Every request counts once against its address's limit, and a request whose user is
        known against the user's: counted with the claim, in the gate's one step. A token this
        process has not verified yet is verified first, unless its address is already known to
        be over its limit here: so a flood's requests are refused before their signatures are
        checked, as soon as the process has seen its counter over (under the limit, each would
        be checked anyway). A token that fails its check is counted by address in a step of its
        own, and over the limit is RATE_LIMITED, as the same request counted first would be.
        Over a limit, only a claim already issued is answered (a lost answer's retry still gets
        its voucher); anything else is RATE_LIMITED. The gate's step is awaited, no thread hop
        (only a deal the gate does not know asks the store, in a thread)."""
        limits = self.rate_limits
        user = self.users.cached_user(token)
        if user is None:
            over = limits.standing(address)
            if isinstance(over, OverLimit):
                self.metrics.claim_done("rate_limited", None)
                return ClaimResult(ClaimOutcome.RATE_LIMITED, over=over)
            try:
                user = self._verified(token)
            except Unauthorized as exc:
                over = await limits.check(address)
                if over is not None:
                    self.metrics.claim_done("rate_limited", None)
                    return ClaimResult(ClaimOutcome.RATE_LIMITED, over=over)
                return ClaimResult(ClaimOutcome.UNAUTHORIZED, reason=str(exc))
        standing = limits.standing(address, user.user_id)
        started = time.perf_counter()
        try:
            decision = await self.gate.claim_async(self._attempt(deal_id, user, idempotency_key, standing))
            if decision.outcome is Outcome.UNKNOWN_DEAL:
                await asyncio.to_thread(self._refuse_lost_deal, deal_id)
        except ConnectionError:
            self.metrics.claim_done("unavailable", time.perf_counter() - started)
            raise
        return self._answer(decision, deal_id, standing, started)

    def claim_as(
        self, deal_id: str, user: User | str, idempotency_key: str, address: str | None = None
    ) -> ClaimResult:
        """``claim`` for a caller that already knows the user (a bench, a test) and blocks: the
        same rate limits, the same gate step (its blocking twin) and the same answers."""
        user = user if isinstance(user, User) else User(user)
        standing = self.rate_limits.standing(address, user.user_id)
        started = time.perf_counter()
        try:
            decision = self.gate.claim(self._attempt(deal_id, user, idempotency_key, standing))
            if decision.outcome is Outcome.UNKNOWN_DEAL:
                self._refuse_lost_deal(deal_id)
        except ConnectionError:
            self.metrics.claim_done("unavailable", time.perf_counter() - started)
            raise
        return self._answer(decision, deal_id, standing, started)

    def _verified(self, token: str) -> User:
        """The user of a token not cached yet; ``Unauthorized`` (an API key said so plainly)."""
        if token.startswith(API_KEY_PREFIX):
            raise Unauthorized(API_KEY_AS_TOKEN)
        return self.users.user(token)

    def _attempt(self, deal_id: str, user: User, idempotency_key: str, standing: Standing) -> ClaimAttempt:
        """The gate's attempt: ``replay_only`` when over a limit already, else counting the
        claim's rate counters in its step."""
        return ClaimAttempt(
            deal_id,
            user.user_id,
            idempotency_key,
            new_voucher_id(),
            int(self.clock()),
            user.email,
            user.phone,
            replay_only=isinstance(standing, OverLimit),
            rate_count=standing if isinstance(standing, RateCount) else None,
        )

    def _refuse_lost_deal(self, deal_id: str) -> None:
        """A deal the gate does not know but the store holds was lost by the gate: 503."""
        if self.store.get_deal(deal_id) is not None:
            raise lost_deal(deal_id)

    def _answer(
        self, decision: ClaimDecision, deal_id: str, standing: Standing, started: float
    ) -> ClaimResult:
        """The signed voucher of an issued or replayed claim, else the refusal (counted)."""
        outcome = decision.outcome
        voucher = decision.voucher
        if voucher is None or outcome not in (Outcome.ISSUED, Outcome.REPLAYED):
            self.metrics.claim_done(outcome, time.perf_counter() - started)
            if outcome is Outcome.RATE_LIMITED:
                over = standing if isinstance(standing, OverLimit) else None
                if isinstance(standing, RateCount):
                    over = self.rate_limits.verdict(standing, decision.hits)
                return ClaimResult(ClaimOutcome.RATE_LIMITED, over=over)
            if outcome in REFUSALS_COUNTED:
                self.refusals.add(deal_id, self.clock(), outcome)
            return _REFUSED[outcome]
        if outcome is Outcome.REPLAYED and isinstance(standing, RateCount):
            self.rate_limits.verdict(standing, decision.hits)  # counted over a limit: remembered
        issued = IssuedVoucher(
            voucher_id=voucher.voucher_id,
            token=self.signer.sign(voucher),
            deal_id=voucher.deal,
            merchant_id=voucher.merchant,
            expires_at=datetime.fromtimestamp(voucher.expires_at, UTC),
            replayed=outcome is Outcome.REPLAYED,
        )
        self.metrics.claim_done(outcome, time.perf_counter() - started)
        return ClaimResult(
            ClaimOutcome.ISSUED if outcome is Outcome.ISSUED else ClaimOutcome.REPLAYED, issued
        )


API_KEY_AS_TOKEN: Final = (
    "that is a merchant's API key: merchant routes take it as X-API-Key: KEY; "
    "a claim takes the user's token from the identity provider"
)
