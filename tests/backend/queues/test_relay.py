"""The relay against the machine's RabbitMQ: every event of the outbox reaches its queues, none
is lost when a relay dies, several relays share the outbox. Each test has its own vhost."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import pytest

from shopcardd_backend.events import CLAIM_ISSUED, ClaimsRefused, event_payload
from shopcardd_backend.gates.base import ClaimGate, OutboxEvent
from shopcardd_backend.queue.base import EXCHANGE, QueueUnavailable
from shopcardd_backend.queue.rabbitmq import RabbitPublisher, close_quietly, connect, declare_topology
from shopcardd_backend.relay import Relay
from waiting import until

from .conftest import NOW, claim_many, down_node, drain, open_deal

pytestmark = pytest.mark.rabbitmq


def _relay_all(relay: Relay) -> None:
    while relay.relay_once():
        pass


def test_each_event_reaches_the_queues_of_its_jobs_and_declaring_twice_is_harmless(
    gate: ClaimGate, amqp_vhost: str
) -> None:
    open_deal(gate)
    issued = claim_many(gate, 3)
    gate.add_event("d1", event_payload(ClaimsRefused("tally-1", "d1", NOW // 60 * 60, {"sold_out": 7})))
    with RabbitPublisher(amqp_vhost) as publisher:
        _relay_all(Relay(gate, publisher))
    issued += claim_many(gate, 1, start=3)
    with RabbitPublisher(amqp_vhost) as publisher:  # declares the whole topology again
        _relay_all(Relay(gate, publisher))
    assert [m["voucher_id"] for m in drain(amqp_vhost, "shopcardd.persist")] == issued
    assert [m["voucher_id"] for m in drain(amqp_vhost, "shopcardd.notify")] == issued
    analytics = drain(amqp_vhost, "shopcardd.analytics")  # issued claims: the vouchers count them
    assert [m["type"] for m in analytics] == ["claims.refused"]
    assert gate.read_outbox() == []


def test_declaring_removes_the_binding_by_which_analytics_took_every_issued_claim(
    gate: ClaimGate, amqp_vhost: str
) -> None:
    connection = connect(amqp_vhost)
    try:  # the topology as it is now, and the binding an earlier version declared
        channel = connection.channel()
        declare_topology(channel)
        channel.queue_bind("shopcardd.analytics", EXCHANGE, routing_key=CLAIM_ISSUED)
    finally:
        close_quietly(connection)
    open_deal(gate)
    issued = claim_many(gate, 2)
    with RabbitPublisher(amqp_vhost) as publisher:  # a relay of this version declares again
        _relay_all(Relay(gate, publisher))
    assert drain(amqp_vhost, "shopcardd.analytics") == []
    assert [m["voucher_id"] for m in drain(amqp_vhost, "shopcardd.persist")] == issued


def test_a_relay_whose_first_node_is_down_publishes_through_the_next(
    gate: ClaimGate, amqp_vhost: str
) -> None:
    open_deal(gate)
    issued = claim_many(gate, 3)
    with RabbitPublisher(f"{down_node(amqp_vhost)},{amqp_vhost}") as publisher:
        _relay_all(Relay(gate, publisher))
    assert [m["voucher_id"] for m in drain(amqp_vhost, "shopcardd.persist")] == issued
    assert gate.read_outbox() == []


@pytest.mark.slow
def test_two_relays_at_once_publish_every_event_once(gate: ClaimGate, amqp_vhost: str) -> None:
    open_deal(gate)
    stop = threading.Event()
    relays = [Relay(gate, RabbitPublisher(amqp_vhost), consumer=f"relay-{n}", batch_size=50) for n in (1, 2)]
    threads = [threading.Thread(target=relay.run, args=(stop,)) for relay in relays]
    for thread in threads:
        thread.start()
    try:
        issued = claim_many(gate, 1500)
        until(lambda: not gate.read_outbox(limit=1), "the outbox drained")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        for relay in relays:
            relay.publisher.close()
    published = [m["voucher_id"] for m in drain(amqp_vhost, "shopcardd.persist")]
    assert sorted(published) == sorted(issued)
    assert all(relay.stats.published for relay in relays), "both relays took a share"


class _DiesAfterPublishing:
    """A publisher whose process dies right after the broker confirmed, before the outbox ack."""

    def __init__(self, inner: RabbitPublisher) -> None:
        self.inner = inner

    def publish(self, events: Sequence[OutboxEvent]) -> None:
        self.inner.publish(events)
        raise _Killed

    def close(self) -> None:
        self.inner.close()


class _Killed(BaseException):
    """Not an Exception: nothing in the relay may catch it, as nothing survives a SIGKILL."""


def test_a_relay_killed_between_publish_and_ack_loses_nothing(gate: ClaimGate, amqp_vhost: str) -> None:
    open_deal(gate)
    issued = claim_many(gate, 40)
    with RabbitPublisher(amqp_vhost) as inner:
        dying = Relay(gate, _DiesAfterPublishing(inner), consumer="dying", batch_size=25, lease_seconds=0.5)
        with pytest.raises(_Killed):
            dying.relay_once()
    with RabbitPublisher(amqp_vhost) as publisher:
        survivor = Relay(gate, publisher, consumer="survivor", lease_seconds=0.5)
        until(
            lambda: survivor.relay_once() == 0 and not gate.read_outbox(limit=1), "the dead lease taken over"
        )
    published = [m["voucher_id"] for m in drain(amqp_vhost, "shopcardd.persist")]
    assert set(published) == set(issued), "every event reached the queue"
    assert len(published) == 40 + 25, "the dead relay's batch was published again (at least once)"


def test_a_broker_that_cannot_be_reached_is_a_transient_error_and_keeps_the_batch(
    gate: ClaimGate, unused_port: int, amqp_vhost: str
) -> None:
    open_deal(gate)
    issued = claim_many(gate, 5)
    with RabbitPublisher(f"amqp://guest:guest@127.0.0.1:{unused_port}/%2F") as nowhere:
        relay = Relay(gate, nowhere, consumer="r")
        with pytest.raises(QueueUnavailable):
            relay.relay_once()
        assert len(gate.read_outbox()) == 5, "nothing left the outbox"
        relay.publisher = RabbitPublisher(amqp_vhost)  # the broker is back
        assert relay.relay_once() == 5, "the batch in hand is published first"
        relay.publisher.close()
    assert [m["voucher_id"] for m in drain(amqp_vhost, "shopcardd.persist")] == issued


def test_an_event_of_a_type_no_queue_takes_is_parked_and_the_rest_relayed(
    gate: ClaimGate, amqp_vhost: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker is fine: retrying cannot route such an event, so it is parked (its whole
    payload in the log line), never retried forever as if a dependency did not answer."""
    open_deal(gate)
    issued = claim_many(gate, 2)
    gate.add_event("d1", {"type": "claim.voided", "event_id": "e-voided", "deal_id": "d1"})
    issued += claim_many(gate, 1, start=2)
    with caplog.at_level(logging.INFO, "shopcardd_backend"), RabbitPublisher(amqp_vhost) as publisher:
        relay = Relay(gate, publisher)
        assert relay.relay_once() == 4, "every event left the outbox"
    assert gate.read_outbox() == []
    assert (relay.stats.published, relay.stats.parked) == (3, 1)
    assert [m["voucher_id"] for m in drain(amqp_vhost, "shopcardd.persist")] == issued
    [parked] = [r for r in caplog.records if r.getMessage() == "event parked"]
    assert "claim.voided" in parked.reason and parked.event["event_id"] == "e-voided"  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if "does not answer" in r.getMessage()]
