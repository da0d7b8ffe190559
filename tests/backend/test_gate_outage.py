"""A Redis outage: the gate answers GateUnavailable promptly (no hang), and after Redis comes
back no claim is lost or half-applied. Runs a Redis of its own (the ``spare_redis`` fixture),
so that it can be frozen, killed and restarted."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
import redis

from servers import SpareRedis
from shopcardd_backend.gates.base import (
    ClaimAttempt,
    ClaimDecision,
    DealTerms,
    GateUnavailable,
    Outcome,
    RateCount,
)
from shopcardd_voucher import new_voucher_id

pytestmark = pytest.mark.redis
MakeGate = Callable[..., Any]
NOW = 1_790_000_000
STOCK = 400
PROMPT = 5.0
"""Seconds within which a call must give up: generous against the gate's 1 s socket timeout."""


def timed_claim(gate: Any, attempt: ClaimAttempt) -> tuple[ClaimDecision | GateUnavailable, float]:
    started = time.monotonic()
    try:
        return gate.claim(attempt), time.monotonic() - started
    except GateUnavailable as exc:
        return exc, time.monotonic() - started


def attempts(n: int, tag: str) -> list[ClaimAttempt]:
    return [ClaimAttempt("d1", f"u{i % 40}", f"{tag}{i}", new_voucher_id(), NOW) for i in range(n)]


def test_a_frozen_redis_gives_gate_unavailable_promptly(make_gate: MakeGate, spare_redis: SpareRedis) -> None:
    gate = make_gate("redis", url=spare_redis.url)
    gate.load_deal(DealTerms("d1", "m1", STOCK, 100, 600))
    spare_redis.signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda a: timed_claim(gate, a), attempts(8, "frozen")))
        with pytest.raises(GateUnavailable):
            gate.check()
    finally:
        spare_redis.signal(signal.SIGCONT)
    assert all(isinstance(result, GateUnavailable) for result, _ in results)
    assert all(result.retry_after >= 1 for result, _ in results if isinstance(result, GateUnavailable))
    assert max(elapsed for _, elapsed in results) < PROMPT
    gate.check()  # back to work once Redis answers again


def test_the_apis_claims_on_a_frozen_redis_give_gate_unavailable_promptly(
    make_gate: MakeGate, spare_redis: SpareRedis
) -> None:
    """The API's way (``claim_async``, the claims in flight pipelined together), counters too."""
    gate = make_gate("redis", url=spare_redis.url)
    gate.load_deal(DealTerms("d1", "m1", STOCK, 100, 600))
    counted = RateCount(("a:192.0.2.1",), (100,), NOW, 60)

    async def timed(attempt: ClaimAttempt) -> tuple[ClaimDecision | GateUnavailable, float]:
        started = time.monotonic()
        try:
            return await gate.claim_async(replace(attempt, rate_count=counted)), time.monotonic() - started
        except GateUnavailable as exc:
            return exc, time.monotonic() - started

    async def flood() -> list[tuple[ClaimDecision | GateUnavailable, float]]:
        try:
            assert (await timed(attempts(1, "warm")[0]))[0].outcome is Outcome.ISSUED  # type: ignore[union-attr]
            spare_redis.signal(signal.SIGSTOP)
            return await asyncio.gather(*(timed(attempt) for attempt in attempts(8, "frozen")))
        finally:
            spare_redis.signal(signal.SIGCONT)
            await gate.aclose()

    results = asyncio.run(flood())
    assert all(isinstance(result, GateUnavailable) for result, _ in results)
    assert max(elapsed for _, elapsed in results) < PROMPT


def test_a_redis_killed_mid_flood_loses_no_claim_and_half_applies_none(
    make_gate: MakeGate, spare_redis: SpareRedis
) -> None:
    gate = make_gate("redis", url=spare_redis.url)
    gate.load_deal(DealTerms("d1", "m1", STOCK, 100, 600))
    flood = attempts(1_500, "k")
    issued_so_far = 0
    count_lock, enough = threading.Lock(), threading.Event()

    def claim(attempt: ClaimAttempt) -> tuple[ClaimDecision | GateUnavailable, float]:
        nonlocal issued_so_far
        result = timed_claim(gate, attempt)
        if isinstance(result[0], ClaimDecision) and result[0].outcome is Outcome.ISSUED:
            with count_lock:
                issued_so_far += 1
                if issued_so_far == 50:
                    enough.set()
        return result

    with ThreadPoolExecutor(16) as pool:
        running = pool.map(claim, flood)
        enough.wait(timeout=60)
        spare_redis.kill()
        results = list(running)

    failed = [a for a, (r, _) in zip(flood, results, strict=True) if isinstance(r, GateUnavailable)]
    issued = {r.voucher for r, _ in results if isinstance(r, ClaimDecision) and r.outcome is Outcome.ISSUED}
    assert failed, "the kill came after every claim: nothing was tested"
    assert max(elapsed for _, elapsed in results) < PROMPT

    spare_redis.start()
    gate.check()  # the script cache is empty after the restart: the gate loads it again
    assert_whole(gate, spare_redis.url)
    events = {e.payload["voucher_id"] for e in gate.read_outbox(limit=10_000)}
    assert {v.voucher_id for v in issued if v is not None} <= events, "a claim answered ISSUED was lost"

    # Clients retry what failed with the same key: a claim that went through is replayed.
    retried = [gate.claim(attempt) for attempt in failed]
    assert {d.outcome for d in retried} <= {Outcome.ISSUED, Outcome.REPLAYED, Outcome.SOLD_OUT}
    for attempt, decision in zip(failed, retried, strict=True):
        if decision.outcome is Outcome.REPLAYED:
            assert decision.voucher is not None and decision.voucher.voucher_id in events
            assert decision.voucher.voucher_id == attempt.voucher_id
    assert_whole(gate, spare_redis.url)


def assert_whole(gate: Any, url: str) -> None:
    """Every issued claim took one unit of stock, counted once for its user, stored its voucher
    and wrote its event; none of these without the others."""
    _, _, users_key, claims_key, _ = gate.deal_keys("d1")
    events = gate.read_outbox(limit=10_000)
    with redis.Redis.from_url(url, decode_responses=True) as client:
        per_user = sum(int(n) for n in client.hvals(users_key))
        stored = client.hlen(claims_key)
    assert gate.stock_left("d1") + len(events) == STOCK
    assert per_user == stored == len(events)
