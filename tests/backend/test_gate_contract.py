"""The claim gate's contract (``ClaimGate``): deals loaded, claims decided, sales closed, the same
on every adapter. A claim writes its outbox event and counts its rate counters in its own step,
so the tests of that step take those ports too (the same adapter). The outbox and the rate
counters on their own: ``test_outbox_contract.py``, ``test_rate_counter_contract.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from gate_suite import NOW, MakeGate, all_events, claim, same_decision, terms
from servers import SpareRedis
from shopcardd_backend.gates.base import (
    ClaimAttempt,
    ClaimDecision,
    ClaimGate,
    GateUnavailable,
    Outbox,
    Outcome,
    RateCount,
    RateCounter,
)
from shopcardd_voucher import Voucher


@pytest.fixture
def gate_kind(every_gate_kind: str) -> str:
    """Every adapter, and the Redis gate with bucketed deals: the contract holds for them all."""
    return every_gate_kind


def test_a_claim_issues_a_voucher_takes_stock_and_records_an_event(gate: ClaimGate, outbox: Outbox) -> None:
    gate.load_deal(terms(voucher_ttl_seconds=600))
    decision = gate.claim(ClaimAttempt("d1", "u1", "k1", "v1", NOW))
    voucher = Voucher("v1", "d1", "u1", "m1", NOW, NOW + 600)
    same_decision(gate, decision, ClaimDecision(Outcome.ISSUED, voucher, 2))
    assert gate.stock_left("d1") == 2
    assert all_events(outbox) == [
        {
            "type": "claim.issued",
            "voucher_id": "v1",
            "deal_id": "d1",
            "merchant_id": "m1",
            "user_id": "u1",
            "idempotency_key": "k1",
            "issued_at": NOW,
            "expires_at": NOW + 600,
        }
    ]


def test_the_same_key_replays_the_same_voucher_and_changes_nothing(gate: ClaimGate, outbox: Outbox) -> None:
    gate.load_deal(terms())
    first = gate.claim(ClaimAttempt("d1", "u1", "k1", "v1", NOW))
    again = gate.claim(ClaimAttempt("d1", "u1", "k1", "v2", NOW + 30))
    assert again.outcome is Outcome.REPLAYED
    assert again.voucher == first.voucher
    assert gate.stock_left("d1") == 2
    assert len(all_events(outbox)) == 1


def test_the_same_key_from_another_user_is_another_claim(gate: ClaimGate) -> None:
    gate.load_deal(terms())
    assert claim(gate, "u1", key="k1").outcome is Outcome.ISSUED
    decision = claim(gate, "u2", key="k1")
    assert decision.outcome is Outcome.ISSUED
    assert decision.voucher is not None and decision.voucher.user == "u2"


def test_a_replay_still_answers_after_the_deal_sold_out_or_closed(gate: ClaimGate) -> None:
    gate.load_deal(terms(stock=1))
    first = claim(gate, "u1", key="k1")
    assert claim(gate, "u2").outcome is Outcome.SOLD_OUT
    assert claim(gate, "u1", key="k1").voucher == first.voucher
    gate.cancel("d1")
    assert claim(gate, "u1", key="k1").voucher == first.voucher


def test_a_replay_only_attempt_answers_a_replay_and_nothing_else(gate: ClaimGate, outbox: Outbox) -> None:
    """Over a rate limit the API asks only for the voucher of a claim already issued."""
    gate.load_deal(terms())
    first = gate.claim(ClaimAttempt("d1", "u1", "k1", "v1", NOW))
    replay = gate.claim(ClaimAttempt("d1", "u1", "k1", "v2", NOW + 5, replay_only=True))
    assert replay.outcome is Outcome.REPLAYED and replay.voucher == first.voucher
    for deal, user, key in [("d1", "u1", "k2"), ("d1", "u2", "k1"), ("no-such-deal", "u1", "k1")]:
        refused = gate.claim(ClaimAttempt(deal, user, key, "v3", NOW, replay_only=True))
        assert (refused.outcome, refused.voucher) == (Outcome.RATE_LIMITED, None), (deal, user, key)
    assert gate.stock_left("d1") == 2
    assert len(all_events(outbox)) == 1


def test_a_claims_rate_counters_are_counted_with_it_and_over_a_limit_it_is_replay_only(
    gate: ClaimGate,
    outbox: Outbox,
    rate_counter: RateCounter,
) -> None:
    """The API counts a claim's rate counters in the claim's own step (Redis: the claim script):
    the same counters as ``count_async``'s, counted once whatever the answer."""
    gate.load_deal(terms(stock=5, per_user_limit=5))
    alice_here = RateCount(("u:alice", "a:192.0.2.1"), (2, 10), NOW, 60)

    def counted(key: str, voucher_id: str, deal: str = "d1", user: str = "alice") -> ClaimDecision:
        return gate.claim(ClaimAttempt(deal, user, key, voucher_id, NOW, rate_count=alice_here))

    first = counted("k1", "v1")
    assert (first.outcome, first.hits) == (Outcome.ISSUED, (1, 1))
    assert (counted("k2", "v2").outcome, counted("k1", "v3").hits) == (Outcome.ISSUED, (3, 3))
    over = counted("k4", "v4")
    assert (over.outcome, over.voucher, over.hits) == (Outcome.RATE_LIMITED, None, (4, 4))
    replay = counted("k1", "v5")
    assert (replay.outcome, replay.voucher, replay.hits) == (Outcome.REPLAYED, first.voucher, (5, 5))
    assert counted("k6", "v6", deal="no-such-deal").outcome is Outcome.RATE_LIMITED
    assert gate.claim(ClaimAttempt("d1", "bob", "k1", "v7", NOW)).hits == (), "no rate_count: nothing counted"

    async def count() -> list[int]:
        try:
            return await rate_counter.count_async(["u:alice", "a:192.0.2.1"], NOW, 60)
        finally:
            await rate_counter.aclose()

    assert asyncio.run(count()) == [7, 7]
    assert gate.stock_left("d1") == 2
    assert len(all_events(outbox)) == 3


def test_sold_out_when_the_stock_is_gone(gate: ClaimGate, outbox: Outbox) -> None:
    gate.load_deal(terms(stock=2, per_user_limit=5))
    assert [claim(gate, f"u{i}").outcome for i in range(4)] == [
        Outcome.ISSUED,
        Outcome.ISSUED,
        Outcome.SOLD_OUT,
        Outcome.SOLD_OUT,
    ]
    assert gate.stock_left("d1") == 0
    assert len(all_events(outbox)) == 2


def test_a_deal_with_no_stock_never_goes_below_zero(gate: ClaimGate, outbox: Outbox) -> None:
    gate.load_deal(terms(stock=0))
    decisions = [claim(gate, f"u{i}") for i in range(3)]
    assert {d.outcome for d in decisions} == {Outcome.SOLD_OUT}
    assert {d.stock_left for d in decisions} == {0}
    assert gate.stock_left("d1") == 0
    assert all_events(outbox) == []


def test_limit_reached_after_per_user_limit_vouchers(gate: ClaimGate) -> None:
    gate.load_deal(terms(stock=10, per_user_limit=2))
    assert [claim(gate, "u1").outcome for _ in range(3)] == [
        Outcome.ISSUED,
        Outcome.ISSUED,
        Outcome.LIMIT_REACHED,
    ]
    assert claim(gate, "u2").outcome is Outcome.ISSUED
    assert gate.stock_left("d1") == 7


@pytest.mark.parametrize(
    ("now", "outcome"),
    [
        (NOW - 1, Outcome.SALE_NOT_OPEN),
        (NOW, Outcome.ISSUED),
        (NOW + 99, Outcome.ISSUED),
        (NOW + 100, Outcome.SALE_NOT_OPEN),
    ],
    ids=["before-start", "at-start", "last-second", "at-end"],
)
def test_claims_only_inside_the_sale_window(gate: ClaimGate, now: int, outcome: Outcome) -> None:
    gate.load_deal(terms(starts_at=NOW, ends_at=NOW + 100))
    decision = claim(gate, now=now)
    assert decision.outcome is outcome
    assert gate.stock_left("d1") == (2 if outcome is Outcome.ISSUED else 3)


def test_cancel_closes_the_sale(gate: ClaimGate) -> None:
    gate.load_deal(terms())
    claim(gate)
    gate.cancel("d1")
    assert claim(gate, "u2").outcome is Outcome.SALE_NOT_OPEN
    assert gate.stock_left("d1") == 2
    gate.load_deal(terms())  # a restart reloading the deal does not reopen it
    assert claim(gate, "u3").outcome is Outcome.SALE_NOT_OPEN


def test_a_deal_loaded_cancelled_is_never_claimable(gate: ClaimGate) -> None:
    """A rebuild of a deal cancelled in the store: closed in the load's own step, no window."""
    claimed = [("k1", Voucher("v1", "d1", "u1", "m1", NOW, NOW + 60))]
    gate.load_deal(terms(stock=3, cancelled=True), claimed)
    assert claim(gate, "u2").outcome is Outcome.SALE_NOT_OPEN
    assert gate.stock_left("d1") == 2
    replay = gate.claim(ClaimAttempt("d1", "u1", "k1", "other", NOW))
    assert replay.outcome is Outcome.REPLAYED, "a voucher issued before the cancel is still replayed"
    gate.load_deal(terms(stock=3))  # loading it again as not cancelled does not reopen it
    gate.load_deal(terms(stock=3), claimed)
    assert claim(gate, "u3").outcome is Outcome.SALE_NOT_OPEN
    gate.load_deal(terms("d2", cancelled=True))  # a fresh deal, no vouchers
    assert claim(gate, deal="d2").outcome is Outcome.SALE_NOT_OPEN
    assert gate.stock_left("d2") == 3


def test_an_unknown_deal(gate: ClaimGate) -> None:
    assert claim(gate, deal="nope") == ClaimDecision(Outcome.UNKNOWN_DEAL)
    assert gate.stock_left("nope") is None
    gate.cancel("nope")
    assert gate.stock_left("nope") is None
    gate.load_deal(terms("nope"))
    assert claim(gate, deal="nope").outcome is Outcome.ISSUED


def test_reloading_a_deal_keeps_its_counters(gate: ClaimGate) -> None:
    gate.load_deal(terms(stock=3, per_user_limit=1))
    claim(gate, "u1")
    gate.load_deal(terms(stock=3, per_user_limit=1))
    assert gate.stock_left("d1") == 2
    assert claim(gate, "u1").outcome is Outcome.LIMIT_REACHED


def test_counters_rebuild_from_claimed_vouchers(gate: ClaimGate) -> None:
    """After the gate's data is lost, the durable store's vouchers rebuild stock, limits, replays."""
    claimed = [
        ("k1", Voucher("v1", "d1", "u1", "m1", NOW, NOW + 60)),
        ("k2", Voucher("v2", "d1", "u1", "m1", NOW, NOW + 60)),
        ("k3", Voucher("v3", "d1", "u2", "m1", NOW, NOW + 60)),
    ]
    gate.load_deal(terms(stock=5, per_user_limit=2))
    for i in range(3):
        claim(gate, "u9", now=NOW + i)  # counters that the rebuild replaces
    gate.load_deal(terms(stock=5, per_user_limit=2), claimed)
    assert gate.stock_left("d1") == 2
    assert claim(gate, "u1").outcome is Outcome.LIMIT_REACHED
    replay = gate.claim(ClaimAttempt("d1", "u2", "k3", "other", NOW + 5))
    same_decision(gate, replay, ClaimDecision(Outcome.REPLAYED, claimed[2][1], 2))
    assert claim(gate, "u2").outcome is Outcome.ISSUED
    assert claim(gate, "u9").outcome is Outcome.ISSUED
    assert claim(gate, "u8").outcome is Outcome.SOLD_OUT


def test_check_passes_on_a_working_gate_and_fails_on_a_closed_one(
    make_gate: MakeGate, gate_kind: str
) -> None:
    gate = make_gate(gate_kind)
    gate.check()
    gate.close()
    with pytest.raises(GateUnavailable):
        gate.check()


def test_the_gate_is_a_context_manager(make_gate: MakeGate, gate_kind: str) -> None:
    with make_gate(gate_kind) as gate:
        gate.load_deal(terms())
        assert gate.stock_left("d1") == 3
    with pytest.raises(GateUnavailable):
        gate.stock_left("d1")


# Redis only: the layout that lets the script run on Redis Cluster, the script cache, an outage.


@pytest.mark.redis
def test_every_key_of_a_deal_is_in_one_cluster_slot(redis_gate: Any, redis_url: str) -> None:
    import redis
    from redis.crc import key_slot

    for deal in ["d1", "deal-with:colons", "{braces}"]:
        redis_gate.load_deal(terms(deal))
        redis_gate.claim(ClaimAttempt(deal, "u1", "k1", "v1", NOW))
        script_keys = redis_gate.deal_keys(deal)
        assert len({key_slot(key.encode()) for key in script_keys}) == 1
        with redis.Redis.from_url(redis_url) as client:
            stored = {k.decode() for k in client.scan_iter(match=f"{redis_gate.prefix}:*", count=1000)}
        stored.discard(redis_gate.active_key)
        assert {k for k in stored if deal in k} == set(script_keys)


@pytest.mark.redis
def test_the_script_survives_a_flushed_script_cache(make_gate: MakeGate, spare_redis: SpareRedis) -> None:
    """NOSCRIPT after a Redis restart: the gate reloads its script; check() stays honest.

    On a Redis of its own: flushing the shared one's script cache would pull the script from
    under the other workers' gates between their reload and their call."""
    import redis

    gate = make_gate("redis", url=spare_redis.url)
    gate.load_deal(terms())
    with redis.Redis.from_url(spare_redis.url) as client:
        client.script_flush()
    gate.check()
    with redis.Redis.from_url(spare_redis.url) as client:
        client.script_flush()
    assert claim(gate).outcome is Outcome.ISSUED


def test_an_unreachable_redis_raises_gate_unavailable(make_gate: MakeGate, unused_port: int) -> None:
    gate = make_gate("redis", url=f"redis://127.0.0.1:{unused_port}/0", prefix="nowhere")
    calls: list[Callable[[], object]] = [
        gate.check,
        lambda: claim(gate),
        lambda: gate.stock_left("d1"),
        lambda: gate.load_deal(terms()),
        lambda: gate.read_outbox(),
    ]
    for call in calls:
        with pytest.raises(GateUnavailable) as raised:
            call()
        assert raised.value.retry_after >= 1


@pytest.mark.redis
def test_a_deal_whose_terms_redis_lost_is_unknown_everywhere(redis_gate: Any, redis_url: str) -> None:
    """A ``cancelled`` flag left alone in the terms hash (written just as Redis lost the deal)
    does not make the deal known: reads say lost, as the claim step does, so an operator's
    rebuild loads it again instead of leaving a deal with no terms and no stock."""
    import redis

    redis_gate.load_deal(terms())
    terms_key, stock_key, *_ = redis_gate.deal_keys("d1")
    with redis.Redis.from_url(redis_url) as client:
        client.delete(terms_key, stock_key)
        client.hset(terms_key, "cancelled", "1")
    assert claim(redis_gate).outcome is Outcome.UNKNOWN_DEAL
    assert redis_gate.stock_left("d1") is None
    redis_gate.cancel("d1")
    assert redis_gate.stock_left("d1") is None
    redis_gate.load_deal(terms(), claimed=[("k1", Voucher("v1", "d1", "u1", "m1", NOW, NOW + 60))])
    assert redis_gate.stock_left("d1") == 2
