"""The outbox's contract (``Outbox``): the events waiting for the relays, the same on every
adapter. Claims (``ClaimGate``, the same adapter) write the events these tests read."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gate_suite import NOW, MakeGate, claim, is_bucketed, terms
from shopcardd_backend.gates.base import ClaimAttempt, ClaimGate, Outbox, OutboxBacklog


@pytest.fixture
def gate_kind(every_gate_kind: str) -> str:
    """Every adapter, and the Redis gate with bucketed deals: the contract holds for them all."""
    return every_gate_kind


def test_the_outbox_pages_in_claim_order_and_forgets_acknowledged_events(
    gate: ClaimGate, outbox: Outbox
) -> None:
    gate.load_deal(terms("d1", stock=10, per_user_limit=10))
    gate.load_deal(terms("d2", stock=10, per_user_limit=10))
    order = [claim(gate, "u1", deal=deal).voucher for deal in ["d1", "d2", "d1", "d2", "d1"]]
    first = outbox.read_outbox(limit=2)
    rest = outbox.read_outbox(after=first[-1].event_id, limit=10)
    events = [*first, *rest]
    assert len(first) == 2 and len(events) == 5
    for deal in ["d1", "d2"]:
        assert [e.payload["voucher_id"] for e in events if e.payload["deal_id"] == deal] == [
            v.voucher_id for v in order if v is not None and v.deal == deal
        ]
    outbox.ack_outbox([e.event_id for e in first])
    assert [e.event_id for e in outbox.read_outbox()] == [e.event_id for e in rest]
    outbox.ack_outbox([e.event_id for e in rest])
    assert outbox.read_outbox() == []
    claim(gate, "u2", deal="d2")
    assert [e.payload["user_id"] for e in outbox.read_outbox()] == ["u2"]


@pytest.mark.redis
def test_outbox_payloads_are_identical_across_adapters(make_gate: MakeGate) -> None:
    payloads = []
    for kind in ["sqlite", "redis"]:
        gate = make_gate(kind)
        gate.load_deal(terms(starts_at=NOW - 10, ends_at=NOW + 10))
        gate.claim(ClaimAttempt("d1", "u1", "k1", "v1", NOW))
        payloads.append([(type(v), k, v) for e in gate.read_outbox() for k, v in e.payload.items()])
    assert payloads[0] == payloads[1]


def test_outbox_reads_one_deals_events_and_all_of_them(gate: ClaimGate, outbox: Outbox) -> None:
    for deal in ["d1", "d2"]:
        gate.load_deal(terms(deal, stock=200, per_user_limit=200))
    for i in range(150):
        claim(gate, f"u{i}", deal=["d1", "d2"][i % 3 == 0])
    d2 = outbox.read_outbox(limit=None, deal_id="d2")
    assert len(d2) == 50 and {e.payload["deal_id"] for e in d2} == {"d2"}
    assert len(outbox.read_outbox(limit=None)) == 150


def test_an_added_event_travels_the_outbox_like_a_claim(gate: ClaimGate, outbox: Outbox) -> None:
    gate.load_deal(terms())
    tally = {
        "type": "claims.refused",
        "event_id": "e1",
        "deal_id": "d1",
        "minute": NOW // 60 * 60,
        "counts": {"sold_out": 3},
    }
    outbox.add_event("d1", tally)
    (leased,) = outbox.lease_outbox("relay", limit=10)
    assert leased.payload == tally


# The outbox as relays take it: leases shared between relays, taken over from a dead one.


def _lease_clock(gate: Any, now: list[float]) -> None:
    """Drive the gate's lease clock by hand (a relay's lease runs out without any sleep)."""
    gate._clock = lambda: now[0]


def test_relays_lease_each_event_to_one_of_them_and_ack_removes_it(gate: ClaimGate, outbox: Outbox) -> None:
    for deal in ["d1", "d2"]:
        gate.load_deal(terms(deal, stock=10, per_user_limit=10))
    issued = {claim(gate, f"u{i}", deal=["d1", "d2"][i % 2]).voucher.voucher_id for i in range(6)}  # type: ignore[union-attr]
    first = outbox.lease_outbox("relay-a", limit=3, lease_seconds=60)
    second = outbox.lease_outbox("relay-b", limit=100, lease_seconds=60)
    ids_a = {e.payload["voucher_id"] for e in first}
    ids_b = {e.payload["voucher_id"] for e in second}
    assert ids_a and not ids_a & ids_b, "an event leased to relay a is not handed to relay b"
    assert ids_a | ids_b == issued
    assert outbox.lease_outbox("relay-c", limit=100, lease_seconds=60) == []
    outbox.ack_outbox([e.event_id for e in [*first, *second]])
    assert outbox.read_outbox() == []


def test_a_dead_relays_lease_is_taken_over_once_it_runs_out(gate: ClaimGate, outbox: Outbox) -> None:
    now = [float(NOW)]
    _lease_clock(outbox, now)
    gate.load_deal(terms(stock=10, per_user_limit=10))
    vouchers = [claim(gate, f"u{i}").voucher for i in range(3)]
    taken = outbox.lease_outbox("dead-relay", limit=100, lease_seconds=30)
    assert len(taken) == 3
    assert outbox.lease_outbox("live-relay", limit=100, lease_seconds=30) == []
    now[0] += 31
    _wait_for_redis_idle(outbox, 31)
    again = outbox.lease_outbox("live-relay", limit=100, lease_seconds=30)
    in_order = [v.voucher_id for v in vouchers if v is not None]
    leased = [e.payload["voucher_id"] for e in again]
    assert (sorted(leased) == sorted(in_order)) if is_bucketed(gate) else (leased == in_order)
    assert {e.event_id for e in again} == {e.event_id for e in taken}
    outbox.ack_outbox([e.event_id for e in again])
    assert outbox.lease_outbox("dead-relay", limit=100, lease_seconds=30) == []


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


def test_the_backlog_counts_the_waiting_events_and_dates_the_oldest(gate: ClaimGate, outbox: Outbox) -> None:
    """What readiness, metrics and the console show when no relay drains the outbox."""
    assert outbox.outbox_backlog() == OutboxBacklog(0, None)
    gate.load_deal(terms("d1", stock=10, per_user_limit=10))
    gate.load_deal(terms("d2", stock=10, per_user_limit=10))
    before = time.time()
    claim(gate, "u1", deal="d1")
    after_first = time.time()
    claim(gate, "u2", deal="d2")
    outbox.add_event("d2", {"type": "claim.refusals", "deal_id": "d2"})
    backlog = outbox.outbox_backlog()
    assert backlog.events == 3
    assert backlog.oldest_at is not None
    assert before - 0.002 <= backlog.oldest_at <= after_first + 0.002  # Redis dates to the millisecond
    assert backlog.oldest_seconds(backlog.oldest_at + 45) == 45
    leased = outbox.lease_outbox("relay-1")
    assert outbox.outbox_backlog().events == 3, "a leased event still waits until acknowledged"
    outbox.ack_outbox([event.event_id for event in leased])
    assert outbox.outbox_backlog() == OutboxBacklog(0, None)
    assert OutboxBacklog(0, None).oldest_seconds(time.time()) == 0
