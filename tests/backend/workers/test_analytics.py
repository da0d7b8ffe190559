"""A deal's claims by minute, exact under redelivery, on every store: the issued claims counted
from the vouchers the persist worker stores, the refusals from the analytics worker's tallies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shopcardd_backend.events import ClaimIssued, ClaimsRefused, Event
from shopcardd_backend.queue.base import BINDINGS
from shopcardd_backend.stores.base import DocumentStore, MinuteCounts
from shopcardd_backend.workers.analytics import AnalyticsHandler
from shopcardd_backend.workers.base import DONE
from shopcardd_backend.workers.persist import PersistHandler

NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T = int(NOON.timestamp())


def issued(voucher_id: str, at: int, deal_id: str = "d1") -> ClaimIssued:
    return ClaimIssued(voucher_id, deal_id, "m1", "u1", f"key-{voucher_id}", at, at + 3600)


def counts(
    minute: int, issued: int = 0, sold_out: int = 0, limit_reached: int = 0, sale_not_open: int = 0
) -> MinuteCounts:
    return MinuteCounts(NOON + timedelta(minutes=minute), issued, sold_out, limit_reached, sale_not_open)


def count(store: DocumentStore, batch: list[Event]) -> None:
    """The batch through the persist and analytics workers, as their queues hand it over."""
    for handler in (PersistHandler(store), AnalyticsHandler(store)):
        routed = [event for event in batch if event.type in BINDINGS[handler.name]]
        assert handler.handle(routed) == [DONE] * len(routed)


def test_claims_are_counted_per_deal_and_minute(store: DocumentStore) -> None:
    batch: list[Event] = [
        issued("v1", T + 5),
        issued("v2", T + 59),
        issued("v3", T + 60),
        ClaimsRefused("r1", "d1", T, {"limit_reached": 2}),
        ClaimsRefused("r2", "d1", T + 60, {"sold_out": 7, "sale_not_open": 1}),
        ClaimsRefused("r3", "d1", T + 60, {"sold_out": 3}),  # another API process, the same minute
        issued("x1", T, deal_id="d2"),
    ]
    count(store, batch)
    assert store.claims_by_minute("d1") == [
        counts(0, issued=2, limit_reached=2),
        counts(1, issued=1, sold_out=10, sale_not_open=1),
    ]
    assert store.claims_by_minute("d2") == [counts(0, issued=1)]


def test_redelivered_events_change_nothing(store: DocumentStore) -> None:
    first: list[Event] = [issued("v1", T), ClaimsRefused("r1", "d1", T, {"sold_out": 4})]
    count(store, first)
    count(store, first)  # the whole batch again (the worker died before its ack)
    count(store, [first[1], issued("v2", T + 1), first[0]])  # another worker, mixed in
    assert store.claims_by_minute("d1") == [counts(0, issued=2, sold_out=4)]


def test_issued_claims_left_in_the_analytics_queue_are_taken_and_add_nothing(store: DocumentStore) -> None:
    """An earlier version counted each issued claim here: what its queue still holds is
    acknowledged, not parked, and counted only by its voucher."""
    leftovers: list[Event] = [issued("v1", T), issued("v2", T + 1)]
    assert AnalyticsHandler(store).handle(leftovers) == [DONE, DONE]
    assert store.claims_by_minute("d1") == []
    PersistHandler(store).handle(leftovers)
    assert store.claims_by_minute("d1") == [counts(0, issued=2)]
