"""The rate counters' contract (``RateCounter``): the claim rate limits' fixed-window counters,
the same on every adapter. A claim counting them in its own step: ``test_gate_contract.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gate_suite import NOW
from shopcardd_backend.gates.base import RateCounter


@pytest.fixture
def gate_kind(every_gate_kind: str) -> str:
    """Every adapter, and the Redis gate with bucketed deals: the contract holds for them all."""
    return every_gate_kind


def test_rate_counters_count_by_name_and_window(rate_counter: RateCounter) -> None:
    async def hits() -> list[list[int]]:
        try:
            return [
                await rate_counter.count_async(["u:alice", "a:192.0.2.1"], NOW, 60),
                await rate_counter.count_async(["u:alice"], NOW, 60),
                await rate_counter.count_async(["u:bob", "u:alice", "a:192.0.2.1"], NOW, 60),
                await rate_counter.count_async(["u:alice"], NOW + 60, 60),  # the next window starts at 1
                await rate_counter.count_async(["u:alice"], NOW + 60, 60),
            ]
        finally:
            await rate_counter.aclose()

    assert asyncio.run(hits()) == [[1, 1], [2], [1, 3, 2], [1], [2]]


@pytest.mark.redis
def test_a_rate_counter_is_a_key_of_its_own_that_expires(redis_gate: Any) -> None:
    async def count() -> None:
        try:
            await redis_gate.count_async(["u:alice", "a:2001:db8::/64"], NOW, 60)
        finally:
            await redis_gate.aclose()

    asyncio.run(count())
    prefix = f"{redis_gate.prefix}:rate:{NOW}:"
    keys = redis_gate._client.keys(f"{redis_gate.prefix}:rate:*")
    assert sorted(keys) == [prefix + "a:2001:db8::/64", prefix + "u:alice"]
    assert all(0 < redis_gate._client.ttl(key) <= 120 for key in keys)
