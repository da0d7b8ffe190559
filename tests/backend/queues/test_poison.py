"""One poison event among good ones: the good ones are stored and counted, the poison one alone is
parked with its reason. Through the relay, the machine's RabbitMQ (a vhost of the test's own) and
the document store (SecantusDB), and through the embedded profile's in-process pipeline.

Two kinds of poison: one ``parse_event`` finds (a time past the year 3000: parked at once), and
one only the handler trips on (parked at the delivery limit, the rest of its batch done)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from shopcardd_backend.events import ClaimIssued, Event, event_payload
from shopcardd_backend.gates.base import ClaimGate
from shopcardd_backend.queue.base import DELIVERY_LIMIT
from shopcardd_backend.queue.inprocess import InProcessPipeline
from shopcardd_backend.queue.rabbitmq import RabbitPublisher, queue_depth
from shopcardd_backend.queue.rabbitmq_consumer import consume
from shopcardd_backend.relay import Relay
from shopcardd_backend.stores.base import DocumentStore
from shopcardd_backend.workers.analytics import AnalyticsHandler
from shopcardd_backend.workers.base import EventHandler, Result
from shopcardd_backend.workers.persist import PersistHandler
from waiting import until

from .conftest import NOW, claim_many, drain, open_deal

pytestmark = [pytest.mark.mongo, pytest.mark.redis]  # make_gate("redis"), make_store("mongo")
GOOD = 20
POISON_ID = "v-poison"
MakeGate = Callable[..., ClaimGate]
MakeStore = Callable[..., DocumentStore]


def far_future_claim() -> dict[str, Any]:
    """The reported poison: a claim event issued at 10**20 s, which no date can hold."""
    return event_payload(ClaimIssued(POISON_ID, "d1", "m1", "u-poison", "k-poison", 10**20, 10**20 + 3600))


def odd_claim() -> dict[str, Any]:
    """A well-formed claim event that the choking handler below cannot take."""
    return event_payload(ClaimIssued(POISON_ID, "d1", "m1", "u-poison", "k-poison", NOW, NOW + 3600))


class ChokingPersist(PersistHandler):
    """The persist handler with a bug ``parse_event`` cannot foresee: any batch holding the
    poison event raises (as the store's driver did on a date it could not encode)."""

    def handle(self, events: Sequence[Event]) -> list[Result]:
        if any(event.event_id == POISON_ID for event in events):
            raise OverflowError("date value out of range")
        return super().handle(events)


def outbox_of_twenty_and_one(gate: ClaimGate, poison: dict[str, Any]) -> list[str]:
    """20 issued claims with the poison event in their midst; the good voucher ids."""
    open_deal(gate)
    good = claim_many(gate, GOOD // 2)
    gate.add_event("d1", poison)
    return good + claim_many(gate, GOOD // 2, start=GOOD // 2)


def assert_all_stored_and_tallied(store: DocumentStore, good: list[str]) -> None:
    until(lambda: len(store.vouchers_of_deal("d1")) >= GOOD, "the good vouchers stored")
    until(lambda: sum(m.issued for m in store.claims_by_minute("d1")) >= GOOD, "the good claims tallied")
    assert sorted(v.voucher_id for v in store.vouchers_of_deal("d1")) == sorted(good)
    assert sum(m.issued for m in store.claims_by_minute("d1")) == GOOD


def parked_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.reason for r in caplog.records if r.getMessage() == "event parked"]  # type: ignore[attr-defined]


@contextmanager
def workers(url: str, handlers: list[EventHandler]) -> Iterator[None]:
    stop = threading.Event()
    threads = [
        threading.Thread(target=consume, args=(url, handler, stop), kwargs={"max_wait": 0.01})
        for handler in handlers
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads), "the workers stopped when asked"


def relay_all(gate: ClaimGate, url: str) -> None:
    with RabbitPublisher(url) as publisher:
        relay = Relay(gate, publisher)
        while relay.relay_once():
            pass
    assert gate.read_outbox() == []


@pytest.mark.rabbitmq
def test_through_rabbitmq_a_poison_event_is_parked_at_once_and_the_twenty_are_stored_and_tallied(
    make_gate: MakeGate, make_store: MakeStore, amqp_vhost: str, caplog: pytest.LogCaptureFixture
) -> None:
    gate, store = make_gate("redis"), make_store("mongo")
    good = outbox_of_twenty_and_one(gate, far_future_claim())
    relay_all(gate, amqp_vhost)
    with (
        caplog.at_level(logging.WARNING, "shopcardd_backend.queue"),
        workers(amqp_vhost, [PersistHandler(store), AnalyticsHandler(store)]),
    ):
        assert_all_stored_and_tallied(store, good)
        until(lambda: queue_depth(amqp_vhost, "persist.parked") == 1, "the poison parked by persist")
    [parked] = drain(amqp_vhost, "shopcardd.persist.parked")
    assert parked["voucher_id"] == POISON_ID
    assert drain(amqp_vhost, "shopcardd.analytics.parked") == [], "analytics takes no claim.issued"
    [reason] = parked_reasons(caplog)
    assert "issued_at" in reason and "3000" in reason


@pytest.mark.rabbitmq
def test_through_rabbitmq_an_event_the_handler_fails_on_is_parked_alone(
    make_gate: MakeGate, make_store: MakeStore, amqp_vhost: str, caplog: pytest.LogCaptureFixture
) -> None:
    gate, store = make_gate("redis"), make_store("mongo")
    good = outbox_of_twenty_and_one(gate, odd_claim())
    relay_all(gate, amqp_vhost)
    with caplog.at_level(logging.WARNING), workers(amqp_vhost, [ChokingPersist(store)]):
        until(lambda: len(store.vouchers_of_deal("d1")) >= GOOD, "the good vouchers stored")
        until(lambda: queue_depth(amqp_vhost, "persist.parked") == 1, "the poison parked")
    assert sorted(v.voucher_id for v in store.vouchers_of_deal("d1")) == sorted(good)
    assert [m["voucher_id"] for m in drain(amqp_vhost, "shopcardd.persist.parked")] == [POISON_ID]
    failures = [r for r in caplog.records if r.getMessage().startswith("handler failed on an event")]
    assert {r.event_id for r in failures} == {POISON_ID}  # type: ignore[attr-defined]
    assert "OverflowError" in failures[0].reason  # type: ignore[attr-defined]
    assert len(failures) <= DELIVERY_LIMIT + 1


def run_pipeline(gate: ClaimGate, handlers: list[EventHandler], lease_seconds: float = 5.0) -> None:
    """The embedded profile's loop, until the outbox is empty."""
    pipeline = InProcessPipeline(gate, handlers, "poison-test", lease_seconds=lease_seconds)
    until(lambda: pipeline.run_once() == 0 and not gate.read_outbox(limit=1), "the outbox emptied")


def test_in_process_a_poison_event_is_parked_at_once_and_the_twenty_are_stored_and_tallied(
    make_gate: MakeGate, make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    gate, store = make_gate("sqlite"), make_store("mongo")
    good = outbox_of_twenty_and_one(gate, far_future_claim())
    with caplog.at_level(logging.WARNING, "shopcardd_backend.queue"):
        run_pipeline(gate, [PersistHandler(store), AnalyticsHandler(store)])
    assert_all_stored_and_tallied(store, good)
    [reason] = parked_reasons(caplog)
    assert "issued_at" in reason and "3000" in reason


def test_in_process_an_event_the_handler_fails_on_is_parked_alone_with_the_reason(
    make_gate: MakeGate, make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    gate, store = make_gate("sqlite"), make_store("mongo")
    good = outbox_of_twenty_and_one(gate, odd_claim())
    with caplog.at_level(logging.WARNING):
        run_pipeline(gate, [ChokingPersist(store), AnalyticsHandler(store)], lease_seconds=0.1)
    assert sorted(v.voucher_id for v in store.vouchers_of_deal("d1")) == sorted(good)
    assert sum(m.issued for m in store.claims_by_minute("d1")) == GOOD, "issued: the vouchers stored"
    [reason] = parked_reasons(caplog)
    assert f"after {DELIVERY_LIMIT} tries" in reason and "OverflowError" in reason
