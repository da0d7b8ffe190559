"""``parse_event``: every value a handler relies on is checked, so a message no handler could act
on is refused with its reason (and parked at once), and every event the claim gate writes passes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shopcardd_backend.events import (
    BadEvent,
    ClaimIssued,
    ClaimsRefused,
    event_payload,
    parse_event,
)

NOW = 1_790_000_000
CLAIM = event_payload(ClaimIssued("v1", "d1", "m1", "u1", "k1", NOW, NOW + 3600, email="a@example.com"))
TALLY = event_payload(ClaimsRefused("e1", "d1", NOW // 60 * 60, {"sold_out": 7}))


def test_what_the_claim_gate_writes_reads_back_the_same() -> None:
    for event in (CLAIM, TALLY):
        body = json.dumps(event_payload(parse_event(event))).encode()  # as a message carries it
        assert event_payload(parse_event(body)) == event


@pytest.mark.parametrize(
    ("base", "changes", "why"),
    [
        (CLAIM, {"issued_at": 10**20, "expires_at": 10**20 + 3600}, "issued_at"),
        (CLAIM, {"expires_at": 2**63}, "expires_at"),
        (CLAIM, {"issued_at": -1}, "issued_at"),
        (CLAIM, {"expires_at": NOW}, "after issued_at"),
        (CLAIM, {"expires_at": NOW + 400 * 86_400}, "after issued_at"),
        (CLAIM, {"voucher_id": "v1\ud800"}, "voucher_id"),
        (CLAIM, {"user_id": "u" * 65}, "user_id"),
        (CLAIM, {"merchant_id": "m1\n"}, "merchant_id"),
        (CLAIM, {"idempotency_key": "k" * 129}, "idempotency_key"),
        (CLAIM, {"idempotency_key": "k\x00"}, "idempotency_key"),
        (CLAIM, {"type": ["claim.issued"]}, "unknown event type"),
        (TALLY, {"minute": 10**20}, "minute"),
        (TALLY, {"counts": {"sold_out": 2**63}}, "counts"),
        (TALLY, {"counts": {"sold_out": 0}}, "counts"),
    ],
)
def test_a_value_no_handler_can_act_on_is_a_bad_event_naming_the_field(
    base: dict[str, Any], changes: dict[str, Any], why: str
) -> None:
    with pytest.raises(BadEvent, match=why):
        parse_event({**base, **changes})
