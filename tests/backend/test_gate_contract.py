"""The claim gate's contract: every behaviour of the port, the same on every adapter."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from shopcardd_backend.gates.base import (
    ClaimAttempt,
    ClaimDecision,
    ClaimGate,
    DealTerms,
    GateUnavailable,
    Outcome,
    RateCount,
)
from shopcardd_voucher import Voucher

MakeGate = Callable[..., Any]
NOW = 1_790_000_000
_ids = itertools.count()


REDIS_KINDS = ("redis", "redis-buckets")


@pytest.fixture(params=["sqlite", *(pytest.param(kind, marks=pytest.mark.redis) for kind in REDIS_KINDS)])
def gate_kind(request: pytest.FixtureRequest) -> str:
    """Every adapter, and the Redis gate with bucketed deals: the contract holds for them all."""
    return str(request.param)


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


def all_events(gate: ClaimGate) -> list[dict[str, Any]]:
    return [event.payload for event in gate.read_outbox(limit=10_000)]


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


def test_a_claim_issues_a_voucher_takes_stock_and_records_an_event(gate: ClaimGate) -> None:
    gate.load_deal(terms(voucher_ttl_seconds=600))
    decision = gate.claim(ClaimAttempt("d1", "u1", "k1", "v1", NOW))
    voucher = Voucher("v1", "d1", "u1", "m1", NOW, NOW + 600)
    same_decision(gate, decision, ClaimDecision(Outcome.ISSUED, voucher, 2))
    assert gate.stock_left("d1") == 2
    assert all_events(gate) == [
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


def test_the_same_key_replays_the_same_voucher_and_changes_nothing(gate: ClaimGate) -> None:
    gate.load_deal(terms())
    first = gate.claim(ClaimAttempt("d1", "u1", "k1", "v1", NOW))
    again = gate.claim(ClaimAttempt("d1", "u1", "k1", "v2", NOW + 30))
    assert again.outcome is Outcome.REPLAYED
    assert again.voucher == first.voucher
    assert gate.stock_left("d1") == 2
    assert len(all_events(gate)) == 1


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


def test_a_replay_only_attempt_answers_a_replay_and_nothing_else(gate: ClaimGate) -> None:
    """Over a rate limit the API asks only for the voucher of a claim already issued."""
    gate.load_deal(terms())
    first = gate.claim(ClaimAttempt("d1", "u1", "k1", "v1", NOW))
    replay = gate.claim(ClaimAttempt("d1", "u1", "k1", "v2", NOW + 5, replay_only=True))
    assert replay.outcome is Outcome.REPLAYED and replay.voucher == first.voucher
    for deal, user, key in [("d1", "u1", "k2"), ("d1", "u2", "k1"), ("no-such-deal", "u1", "k1")]:
        refused = gate.claim(ClaimAttempt(deal, user, key, "v3", NOW, replay_only=True))
        assert (refused.outcome, refused.voucher) == (Outcome.RATE_LIMITED, None), (deal, user, key)
    assert gate.stock_left("d1") == 2
    assert len(all_events(gate)) == 1


def test_rate_counters_count_by_name_and_window(gate: ClaimGate) -> None:
    async def hits() -> list[list[int]]:
        try:
            return [
                await gate.count_async(["u:alice", "a:192.0.2.1"], NOW, 60),
                await gate.count_async(["u:alice"], NOW, 60),
                await gate.count_async(["u:bob", "u:alice", "a:192.0.2.1"], NOW, 60),
                await gate.count_async(["u:alice"], NOW + 60, 60),  # the next window starts at 1
                await gate.count_async(["u:alice"], NOW + 60, 60),
            ]
        finally:
            await gate.aclose()

    assert asyncio.run(hits()) == [[1, 1], [2], [1, 3, 2], [1], [2]]


def test_a_claims_rate_counters_are_counted_with_it_and_over_a_limit_it_is_replay_only(
    gate: ClaimGate,
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
            return await gate.count_async(["u:alice", "a:192.0.2.1"], NOW, 60)
        finally:
            await gate.aclose()

    assert asyncio.run(count()) == [7, 7]
    assert gate.stock_left("d1") == 2
    assert len(all_events(gate)) == 3


def test_sold_out_when_the_stock_is_gone(gate: ClaimGate) -> None:
    gate.load_deal(terms(stock=2, per_user_limit=5))
    assert [claim(gate, f"u{i}").outcome for i in range(4)] == [
        Outcome.ISSUED,
        Outcome.ISSUED,
        Outcome.SOLD_OUT,
        Outcome.SOLD_OUT,
    ]
    assert gate.stock_left("d1") == 0
    assert len(all_events(gate)) == 2


def test_a_deal_with_no_stock_never_goes_below_zero(gate: ClaimGate) -> None:
    gate.load_deal(terms(stock=0))
    decisions = [claim(gate, f"u{i}") for i in range(3)]
    assert {d.outcome for d in decisions} == {Outcome.SOLD_OUT}
    assert {d.stock_left for d in decisions} == {0}
    assert gate.stock_left("d1") == 0
    assert all_events(gate) == []


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


def test_the_outbox_pages_in_claim_order_and_forgets_acknowledged_events(gate: ClaimGate) -> None:
    gate.load_deal(terms("d1", stock=10, per_user_limit=10))
    gate.load_deal(terms("d2", stock=10, per_user_limit=10))
    order = [claim(gate, "u1", deal=deal).voucher for deal in ["d1", "d2", "d1", "d2", "d1"]]
    first = gate.read_outbox(limit=2)
    rest = gate.read_outbox(after=first[-1].event_id, limit=10)
    events = [*first, *rest]
    assert len(first) == 2 and len(events) == 5
    for deal in ["d1", "d2"]:
        assert [e.payload["voucher_id"] for e in events if e.payload["deal_id"] == deal] == [
            v.voucher_id for v in order if v is not None and v.deal == deal
        ]
    gate.ack_outbox([e.event_id for e in first])
    assert [e.event_id for e in gate.read_outbox()] == [e.event_id for e in rest]
    gate.ack_outbox([e.event_id for e in rest])
    assert gate.read_outbox() == []
    claim(gate, "u2", deal="d2")
    assert [e.payload["user_id"] for e in gate.read_outbox()] == ["u2"]


@pytest.mark.redis
def test_outbox_payloads_are_identical_across_adapters(make_gate: MakeGate) -> None:
    payloads = []
    for kind in ["sqlite", "redis"]:
        gate = make_gate(kind)
        gate.load_deal(terms(starts_at=NOW - 10, ends_at=NOW + 10))
        gate.claim(ClaimAttempt("d1", "u1", "k1", "v1", NOW))
        payloads.append([(type(v), k, v) for e in gate.read_outbox() for k, v in e.payload.items()])
    assert payloads[0] == payloads[1]


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


# Redis only: the layout that lets the script run on Redis Cluster, and the script cache.


@pytest.fixture
def redis_gate(make_gate: MakeGate) -> Any:
    return make_gate("redis")


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
def test_the_script_survives_a_flushed_script_cache(redis_gate: Any, redis_url: str) -> None:
    """NOSCRIPT after a Redis restart: the gate reloads its script; check() stays honest."""
    import redis

    redis_gate.load_deal(terms())
    with redis.Redis.from_url(redis_url) as client:
        client.script_flush()
    redis_gate.check()
    with redis.Redis.from_url(redis_url) as client:
        client.script_flush()
    assert claim(redis_gate).outcome is Outcome.ISSUED


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


# The outbox as relays take it: leases shared between relays, taken over from a dead one.


def _lease_clock(gate: Any, now: list[float]) -> None:
    """Drive the gate's lease clock by hand (a relay's lease runs out without any sleep)."""
    gate._clock = lambda: now[0]


def test_relays_lease_each_event_to_one_of_them_and_ack_removes_it(gate: ClaimGate) -> None:
    for deal in ["d1", "d2"]:
        gate.load_deal(terms(deal, stock=10, per_user_limit=10))
    issued = {claim(gate, f"u{i}", deal=["d1", "d2"][i % 2]).voucher.voucher_id for i in range(6)}  # type: ignore[union-attr]
    first = gate.lease_outbox("relay-a", limit=3, lease_seconds=60)
    second = gate.lease_outbox("relay-b", limit=100, lease_seconds=60)
    ids_a = {e.payload["voucher_id"] for e in first}
    ids_b = {e.payload["voucher_id"] for e in second}
    assert ids_a and not ids_a & ids_b, "an event leased to relay a is not handed to relay b"
    assert ids_a | ids_b == issued
    assert gate.lease_outbox("relay-c", limit=100, lease_seconds=60) == []
    gate.ack_outbox([e.event_id for e in [*first, *second]])
    assert gate.read_outbox() == []


def test_a_dead_relays_lease_is_taken_over_once_it_runs_out(gate: ClaimGate) -> None:
    now = [float(NOW)]
    _lease_clock(gate, now)
    gate.load_deal(terms(stock=10, per_user_limit=10))
    vouchers = [claim(gate, f"u{i}").voucher for i in range(3)]
    taken = gate.lease_outbox("dead-relay", limit=100, lease_seconds=30)
    assert len(taken) == 3
    assert gate.lease_outbox("live-relay", limit=100, lease_seconds=30) == []
    now[0] += 31
    _wait_for_redis_idle(gate, 31)
    again = gate.lease_outbox("live-relay", limit=100, lease_seconds=30)
    in_order = [v.voucher_id for v in vouchers if v is not None]
    leased = [e.payload["voucher_id"] for e in again]
    assert (sorted(leased) == sorted(in_order)) if is_bucketed(gate) else (leased == in_order)
    assert {e.event_id for e in again} == {e.event_id for e in taken}
    gate.ack_outbox([e.event_id for e in again])
    assert gate.lease_outbox("dead-relay", limit=100, lease_seconds=30) == []


def _wait_for_redis_idle(gate: Any, seconds: float) -> None:
    """Redis measures a pending entry's idle time with its own clock: make the entries look
    ``seconds`` old with XCLAIM's IDLE option (the SQLite gate reads the lease clock instead)."""
    if not hasattr(gate, "deal_keys"):
        return
    client = gate._client
    for deal in client.zrange(gate.active_key, 0, -1):
        stream = gate.deal_keys(deal)[-1]
        for entry in client.xpending_range(stream, "relay", "-", "+", 1000):
            client.xclaim(
                stream, "relay", entry["consumer"], 0, [entry["message_id"]], idle=int(seconds * 1000)
            )


def test_outbox_reads_one_deals_events_and_all_of_them(gate: ClaimGate) -> None:
    for deal in ["d1", "d2"]:
        gate.load_deal(terms(deal, stock=200, per_user_limit=200))
    for i in range(150):
        claim(gate, f"u{i}", deal=["d1", "d2"][i % 3 == 0])
    d2 = gate.read_outbox(limit=None, deal_id="d2")
    assert len(d2) == 50 and {e.payload["deal_id"] for e in d2} == {"d2"}
    assert len(gate.read_outbox(limit=None)) == 150


def test_an_added_event_travels_the_outbox_like_a_claim(gate: ClaimGate) -> None:
    gate.load_deal(terms())
    tally = {
        "type": "claims.refused",
        "event_id": "e1",
        "deal_id": "d1",
        "minute": NOW // 60 * 60,
        "counts": {"sold_out": 3},
    }
    gate.add_event("d1", tally)
    (leased,) = gate.lease_outbox("relay", limit=10)
    assert leased.payload == tally


@pytest.mark.redis
def test_the_redis_relay_reads_only_deals_with_pending_events(redis_gate: Any) -> None:
    """A deal whose events were all relayed leaves the active index once idle, so relays never
    scan every deal ever created; a claim on it puts it back before its event is written."""
    now = [float(NOW)]
    _lease_clock(redis_gate, now)
    for deal in ["busy", "quiet"]:
        redis_gate.load_deal(terms(deal, stock=10, per_user_limit=10))
    claim(redis_gate, deal="quiet")
    redis_gate.ack_outbox(e.event_id for e in redis_gate.lease_outbox("relay", limit=10))
    now[0] += 61
    redis_gate._touched.clear()
    claim(redis_gate, deal="busy", now=int(now[0]))
    redis_gate.lease_outbox("relay", limit=10)  # quiet: empty and idle, so forgotten
    active = set(redis_gate._client.zrange(redis_gate.active_key, 0, -1))
    assert active == {"busy"}
    redis_gate._touched.clear()
    claim(redis_gate, deal="quiet", now=int(now[0]))
    assert "quiet" in set(redis_gate._client.zrange(redis_gate.active_key, 0, -1))
    assert {e.payload["deal_id"] for e in redis_gate.lease_outbox("relay", limit=10)} == {"quiet"}
