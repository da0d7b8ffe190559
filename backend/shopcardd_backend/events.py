"""The events that leave the claim gate's outbox: what they hold and how they are checked.

Two kinds, told apart by ``type`` (also the RabbitMQ routing key):

- ``claim.issued``: one per voucher issued, written in the claim's own atomic step; its id is
  the voucher id. Persist stores the voucher, notify tells the customer, analytics counts it.
- ``claims.refused``: a tally of refused claims of one deal in one minute (sold out, limit
  reached, sale not open), written by each API process about once a second; its id is random.
  Only analytics reads it. Refusals are the bulk of a flash sale's traffic, so they are counted
  in memory and sent as tallies, not as one event each.

Every worker parses a message with ``parse_event``: a body that is not JSON, lacks a field, or
holds a value no handler can act on (a time past the year 3000, an id no voucher could carry, a
count past 32 bits) is ``BadEvent`` and is parked at once (retrying cannot mend it). The checks
are those of the voucher itself, so an event the claim gate wrote always passes, and a handler
never meets a value that would make it fail for the whole batch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from shopcardd_voucher import (
    ID_RULE,
    MAX_TIMESTAMP,
    MAX_VOUCHER_LIFETIME_SECONDS,
    Voucher,
    is_valid_id,
)

from .stores.base import VoucherRecord

CLAIM_ISSUED: Final = "claim.issued"
CLAIMS_REFUSED: Final = "claims.refused"
REFUSAL_OUTCOMES: Final = ("sold_out", "limit_reached", "sale_not_open")


class BadEvent(ValueError):
    """A message no worker can act on; ``str(exc)`` says why (logged when it is parked)."""


@dataclass(frozen=True, slots=True)
class ClaimIssued:
    voucher_id: str
    deal_id: str
    merchant_id: str
    user_id: str
    idempotency_key: str
    issued_at: int
    """Epoch seconds."""
    expires_at: int
    email: str | None = None
    """The customer's address, from the identity provider's token (``email``), when it had one."""
    phone: str | None = None
    """The customer's number, from the token's ``phone_number``, when it had one."""
    type: str = field(default=CLAIM_ISSUED, init=False)

    @property
    def event_id(self) -> str:
        return self.voucher_id

    @classmethod
    def of(
        cls, voucher: Voucher, idempotency_key: str, email: str | None = None, phone: str | None = None
    ) -> ClaimIssued:
        """The event of a voucher the claim gate just issued."""
        return cls(
            voucher.voucher_id,
            voucher.deal,
            voucher.merchant,
            voucher.user,
            idempotency_key,
            int(voucher.issued_at),
            int(voucher.expires_at),
            email,
            phone,
        )

    def voucher(self) -> Voucher:
        """The voucher's claims, for the claim gate (a rebuild from the outbox)."""
        return Voucher(
            self.voucher_id, self.deal_id, self.user_id, self.merchant_id, self.issued_at, self.expires_at
        )

    def record(self) -> VoucherRecord:
        """The voucher as the document store keeps it."""
        return VoucherRecord(
            voucher_id=self.voucher_id,
            deal_id=self.deal_id,
            merchant_id=self.merchant_id,
            user_id=self.user_id,
            idempotency_key=self.idempotency_key,
            issued_at=datetime.fromtimestamp(self.issued_at, UTC),
            expires_at=datetime.fromtimestamp(self.expires_at, UTC),
        )


@dataclass(frozen=True, slots=True)
class ClaimsRefused:
    event_id: str
    deal_id: str
    minute: int
    """Epoch seconds of the minute's start."""
    counts: dict[str, int]
    """Refused claims by outcome (``REFUSAL_OUTCOMES``); outcomes with none are left out."""
    type: str = field(default=CLAIMS_REFUSED, init=False)


Event = ClaimIssued | ClaimsRefused

_ID_FIELDS: Final = {
    CLAIM_ISSUED: ("voucher_id", "deal_id", "merchant_id", "user_id"),
    CLAIMS_REFUSED: ("event_id", "deal_id"),
}
"""Ids a voucher carries (or an id of the same form): checked as the verifier checks them."""
_TIME_FIELDS: Final = {CLAIM_ISSUED: ("issued_at", "expires_at"), CLAIMS_REFUSED: ("minute",)}
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 128
"""The API admits 1 to 128 visible ASCII characters in ``Idempotency-Key``."""
MAX_REFUSAL_COUNT: Final = 2**31 - 1
"""Refusals of one outcome in one tally: far beyond what a process refuses in a minute."""


def event_payload(event: Event) -> dict[str, Any]:
    """The event as the outbox and the queue carry it (JSON-ready; empty contacts left out)."""
    return {name: value for name, value in asdict(event).items() if value is not None}


def parse_event(body: bytes | str | dict[str, Any]) -> Event:
    """The event in a message body (or an already decoded payload); ``BadEvent`` says why not."""
    if isinstance(body, dict):
        payload: Any = body
    else:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadEvent(f"the body is not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise BadEvent("the body is not a JSON object")
    kind = event_type(payload)
    if kind is None or kind not in _ID_FIELDS:
        raise BadEvent(f"unknown event type {str(payload.get('type'))[:40]!r}")
    for name in _ID_FIELDS[kind]:
        if not is_valid_id(payload.get(name)):
            raise BadEvent(f"{kind}: {name} is missing or not {ID_RULE}")
    for name in _TIME_FIELDS[kind]:
        value = payload.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIMESTAMP:
            raise BadEvent(
                f"{kind}: {name} is missing or not a whole number of seconds from 0 to {MAX_TIMESTAMP}"
                " (the year 3000)"
            )
    if kind == CLAIMS_REFUSED:
        counts = payload.get("counts")
        if (
            not isinstance(counts, dict)
            or not counts
            or not all(
                outcome in REFUSAL_OUTCOMES and type(n) is int and 0 < n <= MAX_REFUSAL_COUNT
                for outcome, n in counts.items()
            )
        ):
            outcomes = ", ".join(REFUSAL_OUTCOMES)
            raise BadEvent(f"{kind}: counts must map {outcomes} to numbers from 1 to {MAX_REFUSAL_COUNT}")
        return ClaimsRefused(payload["event_id"], payload["deal_id"], payload["minute"], dict(counts))
    key = payload.get("idempotency_key")
    if not isinstance(key, str) or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
        limit = MAX_IDEMPOTENCY_KEY_LENGTH
        raise BadEvent(f"{kind}: idempotency_key is missing or not 1 to {limit} printable characters")
    if not 0 < payload["expires_at"] - payload["issued_at"] <= MAX_VOUCHER_LIFETIME_SECONDS:
        limit = MAX_VOUCHER_LIFETIME_SECONDS
        raise BadEvent(f"{kind}: expires_at must come 1 to {limit} seconds (366 days) after issued_at")
    contacts = {name: payload.get(name) for name in ("email", "phone")}
    for name, value in contacts.items():
        if value is not None and (not isinstance(value, str) or not value):
            raise BadEvent(f"{kind}: {name} must be a non-empty string when given")
    return ClaimIssued(
        **{name: payload[name] for name in (*_ID_FIELDS[kind], "idempotency_key", *_TIME_FIELDS[kind])},
        **contacts,
    )


def event_type(payload: dict[str, Any]) -> str | None:
    """The ``type`` of an event's payload, the routing key it travels under; None when it is not
    a string. Claim events written before types existed have none: they are ``claim.issued``."""
    kind = payload.get("type", CLAIM_ISSUED)
    return kind if isinstance(kind, str) else None
