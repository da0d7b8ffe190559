"""What the gate's contract suites share (one suite per port: ``test_gate_contract.py``,
``test_outbox_contract.py``, ``test_rate_counter_contract.py``): a deal's terms, a claim, the
events, and how a bucketed gate's answers may differ."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shopcardd_backend.gates.base import ClaimAttempt, ClaimDecision, ClaimGate, DealTerms, Outbox

MakeGate = Callable[..., Any]
NOW = 1_790_000_000
_ids = itertools.count()


def terms(deal_id: str = "d1", **changes: Any) -> DealTerms:
    values: dict[str, Any] = {
        "deal_id": deal_id,
        "merchant_id": "m1",
        "stock": 3,
        "per_user_limit": 2,
        "voucher_ttl_seconds": 3600,
    }
    return DealTerms(**(values | changes))


def claim(
    gate: ClaimGate, user: str = "u1", key: str | None = None, deal: str = "d1", now: int = NOW
) -> ClaimDecision:
    """One claim with a fresh voucher id (and a fresh idempotency key unless given)."""
    n = next(_ids)
    return gate.claim(ClaimAttempt(deal, user, key or f"key-{n}", f"voucher-{n}", now))


def all_events(outbox: Outbox) -> list[dict[str, Any]]:
    return [event.payload for event in outbox.read_outbox(limit=10_000)]


def is_bucketed(gate: ClaimGate) -> bool:
    """A gate that splits deals into buckets: a decision's ``stock_left`` is its bucket's, and a
    deal's events keep their order per user (per bucket), not across the deal."""
    return getattr(gate, "buckets", 1) > 1


def same_decision(gate: ClaimGate, got: ClaimDecision, expected: ClaimDecision) -> None:
    if is_bucketed(gate):
        assert got.stock_left is not None and expected.stock_left is not None
        assert got.stock_left <= expected.stock_left
        got, expected = replace(got, stock_left=None), replace(expected, stock_left=None)
    assert got == expected
