"""The claim gate port: one atomic step decides a claim and writes its outbox event.

Everything that must never be wrong under concurrency lives behind this port: stock never
below zero, no user above the per-user limit, one voucher per idempotency key, and the
claim event recorded in the same step as the decision. Adapters: ``redis.py`` (one Lua
script, every key of a deal under the hash tag ``{deal_id}``, the outbox a stream in the
same slot) and ``sqlite.py`` (one transaction). Both pass the contract suite of each port
(``tests/backend/test_gate_contract.py``, ``test_outbox_contract.py``, ``test_rate_counter_contract.py``).

Three ports, each one job: ``ClaimGate`` (load deals, decide claims, close sales), ``Outbox``
(the events waiting for the relay) and ``RateCounter`` (the claim rate limits' counters). One
adapter implements all three over one store (``ClaimPorts``), so that a claim and its outbox
event stay one atomic step; each user of them (the claim and deal services, the relay, the rate
limits) takes the one port it needs.

The gate decides; it does not sign. The voucher's claims (id, issue and expiry time) are
fixed inside the atomic step and stored with the idempotency key, so a replay gets the same
voucher back and the API signs it again (EdDSA signatures are deterministic: the same token).

The outbox is drained, not tailed: the relay reads the oldest events, publishes them, then
``ack_outbox`` removes them. A bare "after this id" cursor cannot be trusted on Redis, where
each deal has its own stream (one cluster slot per deal) and no id orders events across
streams written concurrently; acknowledging is what guarantees no event is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

from shopcardd_voucher import Voucher

from ..events import ClaimIssued, event_payload
from ..storage import TransientError


class GateError(Exception):
    """Root of the gate's errors."""


class GateUnavailable(GateError, TransientError):
    """The gate's store cannot be reached now; transient, the caller answers 503 + Retry-After."""


@dataclass(frozen=True, slots=True)
class DealTerms:
    """What the gate must know of a deal to decide claims on it. Times are epoch seconds."""

    deal_id: str
    merchant_id: str
    stock: int
    per_user_limit: int
    voucher_ttl_seconds: int
    starts_at: int | None = None
    ends_at: int | None = None
    cancelled: bool = False
    """Load the deal already closed, in the same atomic step as its terms (a rebuild of a deal
    cancelled in the store): no claim can be issued on it in between. ``False`` never reopens
    a deal the gate holds cancelled."""
    buckets: int | None = None
    """How many parts to split the stock into, each decided on its own (Redis: a cluster slot
    each, so one hot deal spreads over a whole cluster); None: the gate's default. Fixed when
    the deal is first loaded. The SQLite gate has one part whatever this says."""


@dataclass(frozen=True, slots=True)
class RateCount:
    """Claim rate counters to count with a claim, in the gate's own step (``ClaimAttempt.rate_count``).

    One counter per limit (``ratelimits.py`` names them), each with its limit, all of the fixed
    window that starts at ``window_start``. Counting them in the claim's step instead of one of
    their own saves the claim a round trip to the store (Redis: a pipeline turn, a sizeable
    share of the claim's API CPU; docs/performance.md)."""

    names: tuple[str, ...]
    limits: tuple[int, ...]
    window_start: int
    window_seconds: int

    def over(self, hits: Sequence[int]) -> bool:
        """True when a counter's new value is over its limit."""
        return any(hit > limit for hit, limit in zip(hits, self.limits, strict=True))


@dataclass(frozen=True, slots=True)
class ClaimAttempt:
    """One user asking for one voucher of one deal."""

    deal_id: str
    user_id: str
    idempotency_key: str
    voucher_id: str
    """A fresh id (``shopcardd_voucher.new_voucher_id()``), used only if this attempt wins."""
    now: int
    email: str | None = None
    """Where to tell the customer, from the user's token; carried by the claim event only."""
    phone: str | None = None
    replay_only: bool = False
    """The caller is over a rate limit: answer a replay (the voucher this user and key were
    issued) and nothing else; every other answer is RATE_LIMITED, and nothing changes."""
    rate_count: RateCount | None = None
    """Counters to add one to first; when one goes over its limit, the attempt is ``replay_only``."""


class Outcome(StrEnum):
    ISSUED = "issued"
    """A new voucher: stock and the user's count went down by one, an event is in the outbox."""
    REPLAYED = "replayed"
    """The same user and idempotency key claimed before: the same voucher again, nothing changed."""
    SOLD_OUT = "sold_out"
    LIMIT_REACHED = "limit_reached"
    SALE_NOT_OPEN = "sale_not_open"
    """Before ``starts_at``, after ``ends_at``, or the deal was cancelled."""
    UNKNOWN_DEAL = "unknown_deal"
    RATE_LIMITED = "rate_limited"
    """A ``replay_only`` attempt that is no replay."""


@dataclass(frozen=True, slots=True)
class ClaimDecision:
    outcome: Outcome
    voucher: Voucher | None = None
    """Set for ISSUED and REPLAYED (``kid`` left empty: the signer fills it)."""
    stock_left: int | None = None
    hits: tuple[int, ...] = ()
    """The new values of the attempt's ``rate_count`` counters, in its order (empty without one)."""


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event waiting to be relayed. ``event_id`` is the outbox's own id (orders it; what
    ``ack_outbox`` takes); ``payload`` is ``events.event_payload`` of the event, the same on
    every adapter (``events.parse_event`` reads it back)."""

    event_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OutboxBacklog:
    """How much waits in the outbox: what tells an operator that no relay drains it."""

    events: int
    """Events not yet acknowledged, leased or not."""
    oldest_at: float | None
    """When the oldest of them was written (epoch seconds); None when there is none."""

    def oldest_seconds(self, now: float) -> float:
        """How long the oldest event has waited at ``now``; 0 when nothing waits."""
        return 0.0 if self.oldest_at is None else max(0.0, now - self.oldest_at)


CHECK_DEAL_ID = "_shopcardd_check"
"""The deal ``check()`` claims against: never loaded, so the step runs and answers UNKNOWN_DEAL."""


def claim_event_payload(voucher: Voucher, attempt: ClaimAttempt) -> dict[str, Any]:
    """The outbox payload of one issued claim; every adapter builds it here, so they agree."""
    return event_payload(ClaimIssued.of(voucher, attempt.idempotency_key, attempt.email, attempt.phone))


def check_claim_step(gate: ClaimGate) -> None:
    """The heart of every adapter's ``check()``: one claim through the real step, against
    ``CHECK_DEAL_ID``; any answer but UNKNOWN_DEAL is a broken step (``GateUnavailable``)."""
    decision = gate.claim(ClaimAttempt(CHECK_DEAL_ID, "_check", "_check", "_check", int(time.time())))
    if decision.outcome is not Outcome.UNKNOWN_DEAL:
        raise GateUnavailable(f"claim step answered {decision.outcome} for the check deal")


def count_apart(attempt: ClaimAttempt, hits: Sequence[int]) -> ClaimAttempt:
    """``attempt`` once its ``rate_count`` was counted in a step of its own (``hits``): counted no
    more, and ``replay_only`` when over a limit."""
    counted = attempt.rate_count
    if counted is None:
        return attempt
    return replace(attempt, rate_count=None, replay_only=attempt.replay_only or counted.over(hits))


class ClaimGate(Protocol):
    """The claim port: deals loaded, claims decided (each with its outbox event), sales closed."""

    def load_deal(self, terms: DealTerms, claimed: Iterable[tuple[str, Voucher]] = ()) -> None:
        """Make the gate ready for ``terms``; ``claimed`` is (idempotency key, voucher) already
        issued, for rebuilding stock and per-user counts from the durable store. Loading a deal
        the gate already holds leaves its counters alone unless ``claimed`` is given. The terms,
        the counters and ``terms.cancelled`` become visible to claims together, atomically."""

    def claim(self, attempt: ClaimAttempt) -> ClaimDecision:
        """Decide one claim atomically. Raises ``GateUnavailable`` when the store is down.

        The order of the rules, the same in every adapter: UNKNOWN_DEAL; REPLAYED (the same
        user and idempotency key on this deal: the stored voucher, even when the deal has since
        sold out or closed); SALE_NOT_OPEN; SOLD_OUT; LIMIT_REACHED; else ISSUED. The voucher
        of an ISSUED claim is ``attempt.voucher_id``, issued at ``attempt.now``, expiring
        ``voucher_ttl_seconds`` later, and its ``claim.issued`` event is in the adapter's
        ``Outbox`` in the same step. After a ``GateUnavailable`` the claim may or may not
        have been applied (never half): retrying with the same key answers either way. With
        ``attempt.replay_only``: REPLAYED, else RATE_LIMITED (an unknown deal too). With
        ``attempt.rate_count``: its counters are counted first, as ``RateCounter.count_async``
        counts them, and over a limit the attempt is decided as ``replay_only``; ``hits`` are
        their values. Redis counts them in the claim's own script; a gate that cannot, in a step
        before it (``count_apart``)."""

    async def claim_async(self, attempt: ClaimAttempt) -> ClaimDecision:
        """``claim`` for the API's event loop: the same step, the same answers and errors.
        Redis awaits its own asyncio client (no thread hop on the hot path); SQLite, whose
        driver blocks, runs its transaction in a worker thread."""

    def stock_left(self, deal_id: str) -> int | None:
        """Vouchers left, or None when the gate does not know the deal."""

    def cancel(self, deal_id: str) -> None:
        """Close the sale: every later claim is SALE_NOT_OPEN."""

    def check(self) -> None:
        """Prove the gate works end to end (runs the claim step's code), for ``/readyz``.
        Raises ``GateUnavailable`` when it does not."""

    async def aclose(self) -> None:
        """Close what ``claim_async`` opened (inside the event loop that used it)."""

    def close(self) -> None: ...


class Outbox(Protocol):
    """The events waiting to leave the backend: written by the claim step (and ``add_event``),
    taken by the relays, forgotten once published."""

    def read_outbox(
        self, after: str | None = None, limit: int | None = 100, deal_id: str | None = None
    ) -> Sequence[OutboxEvent]:
        """The oldest events not yet acknowledged (leased or not), in order, after ``after`` (an
        ``event_id`` of this same pass, to page through it); ``limit`` None for all, ``deal_id``
        for one deal's. For looking, not relaying: relays take events with ``lease_outbox``.
        Each deal's events keep their claim order."""

    def lease_outbox(self, consumer: str, limit: int = 100, lease_seconds: float = 30.0) -> list[OutboxEvent]:
        """Take events for ``consumer`` (a relay) to publish: new ones, and those another
        consumer took more than ``lease_seconds`` ago without acknowledging them (it died).
        Several relays may lease at once; an event is leased to one at a time. May return a
        few more than ``limit`` (the leases already taken are never dropped)."""

    def ack_outbox(self, event_ids: Iterable[str]) -> None:
        """Forget events the relay has published (confirmed); unknown ids are ignored."""

    def add_event(self, deal_id: str, payload: dict[str, Any]) -> None:
        """Append an event that no claim step writes (a tally of refusals) to the deal's outbox."""

    def outbox_backlog(self) -> OutboxBacklog:
        """The events waiting and when the oldest was written: one cheap look (a count and the
        head of each deal's events), for readiness, metrics and the console, never a claim."""

    def close(self) -> None: ...


class RateCounter(Protocol):
    """Fixed-window counters every API process sees: the claim rate limits' hits."""

    async def count_async(self, names: Sequence[str], window_start: int, window_seconds: int) -> list[int]:
        """Add one to each named counter of the fixed window that starts at ``window_start``
        (epoch seconds) and return their new values. A counter is forgotten some time after its
        window ends. Redis: one key per counter (its own slot), the calls joining the claims'
        pipeline."""

    async def aclose(self) -> None:
        """Close what ``count_async`` opened (inside the event loop that used it)."""


class ClaimPorts(ClaimGate, Outbox, RateCounter, Protocol):
    """The three ports as one adapter gives them over one store (``RedisClaimGate``,
    ``SqliteClaimGate``): the claim and its outbox event stay one atomic step. Only the
    composition root holds this; every other part takes the one port it uses."""
