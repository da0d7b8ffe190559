"""The claim gate port: one atomic step decides a claim and writes its outbox event.

Everything that must never be wrong under concurrency lives behind this port: stock never
below zero, no user above the per-user limit, one voucher per idempotency key, and the
claim event recorded in the same step as the decision. Adapters: ``redis.py`` (one Lua
script, every key of a deal under the hash tag ``{deal_id}``, the outbox a stream in the
same slot) and ``sqlite.py`` (one transaction). Both pass ``tests/backend/test_gate_contract.py``.

The gate decides; it does not sign. The voucher's claims (id, issue and expiry time) are
fixed inside the atomic step and stored with the idempotency key, so a replay gets the same
voucher back and the API signs it again (EdDSA signatures are deterministic: the same token).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from shopcardd_voucher import Voucher


class GateError(Exception):
    """Root of the gate's errors."""


class GateUnavailable(GateError, ConnectionError):
    """The gate's store cannot be reached now; transient, the caller answers 503 + Retry-After."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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


@dataclass(frozen=True, slots=True)
class ClaimAttempt:
    """One user asking for one voucher of one deal."""

    deal_id: str
    user_id: str
    idempotency_key: str
    voucher_id: str
    """A fresh id (``shopcardd_voucher.new_voucher_id()``), used only if this attempt wins."""
    now: int


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


@dataclass(frozen=True, slots=True)
class ClaimDecision:
    outcome: Outcome
    voucher: Voucher | None = None
    """Set for ISSUED and REPLAYED (``kid`` left empty: the signer fills it)."""
    stock_left: int | None = None


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A claim event waiting to be relayed to RabbitMQ. ``event_id`` orders the outbox.

    ``payload`` holds, for every adapter alike: ``type`` ("claim.issued"), ``voucher_id``,
    ``deal_id``, ``merchant_id``, ``user_id``, ``idempotency_key``, ``issued_at`` and
    ``expires_at`` (epoch seconds, integers).
    """

    event_id: str
    payload: dict[str, Any]


class ClaimGate(Protocol):
    def load_deal(self, terms: DealTerms, claimed: Iterable[tuple[str, Voucher]] = ()) -> None:
        """Make the gate ready for ``terms``; ``claimed`` is (idempotency key, voucher) already
        issued, for rebuilding stock and per-user counts from the durable store. Loading a deal
        the gate already holds leaves its counters alone unless ``claimed`` is given."""

    def claim(self, attempt: ClaimAttempt) -> ClaimDecision:
        """Decide one claim atomically. Raises ``GateUnavailable`` when the store is down."""

    def stock_left(self, deal_id: str) -> int | None:
        """Vouchers left, or None when the gate does not know the deal."""

    def cancel(self, deal_id: str) -> None:
        """Close the sale: every later claim is SALE_NOT_OPEN."""

    def read_outbox(self, after: str | None = None, limit: int = 100) -> Sequence[OutboxEvent]:
        """Events in order, after ``after`` (an ``event_id``), for the relay and for tests."""

    def check(self) -> None:
        """Prove the gate works end to end (runs the claim step's code), for ``/readyz``.
        Raises ``GateUnavailable`` when it does not."""

    def close(self) -> None: ...
