"""The queue runner against the machine's RabbitMQ: acks after durable work, parking of bad and
hopeless messages, a clean stop. Each test has its own vhost."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import pytest

from shopcardd_backend.events import CLAIM_ISSUED, Event
from shopcardd_backend.queue.base import DELIVERY_LIMIT
from shopcardd_backend.queue.rabbitmq import queue_depth
from shopcardd_backend.queue.rabbitmq_consumer import consume
from shopcardd_backend.storage import TransientError
from shopcardd_backend.workers.base import DONE, Result, Verdict
from waiting import until

from .conftest import down_node, drain, publish_raw

pytestmark = pytest.mark.rabbitmq
EVENT = (
    b'{"type":"claim.issued","voucher_id":"v1","deal_id":"d1","merchant_id":"m1","user_id":"u1",'
    b'"idempotency_key":"k1","issued_at":1790000000,"expires_at":1790003600}'
)


class Recorder:
    """A handler that answers what ``answer`` says and remembers every event it was given."""

    name = "persist"
    event_types = (CLAIM_ISSUED,)
    batch_size = 10

    def __init__(self, answer: Callable[[Event], Result] = lambda event: DONE) -> None:
        self.answer = answer
        self.seen: list[str] = []

    def handle(self, events: Sequence[Event]) -> list[Result]:
        self.seen += [event.event_id for event in events]
        return [self.answer(event) for event in events]

    def close(self) -> None:
        pass


@contextmanager
def running(url: str, handler: Recorder) -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=consume, args=(url, handler, stop), kwargs={"max_wait": 0.01})
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the worker stopped when asked"


def test_a_handled_message_is_acknowledged_and_gone(amqp_vhost: str) -> None:
    handler = Recorder()
    with running(amqp_vhost, handler):
        until(lambda: queue_depth(amqp_vhost, "persist") == 0, "topology declared")
        publish_raw(amqp_vhost, "claim.issued", EVENT)
        until(lambda: handler.seen == ["v1"], "the event handled")
    assert queue_depth(amqp_vhost, "persist") == 0
    assert drain(amqp_vhost, "shopcardd.persist.parked") == []


def test_a_worker_whose_first_node_is_down_consumes_on_the_next(amqp_vhost: str) -> None:
    handler = Recorder()
    with running(f"{down_node(amqp_vhost)},{amqp_vhost}", handler):
        until(lambda: queue_depth(amqp_vhost, "persist") == 0, "topology declared")
        publish_raw(amqp_vhost, "claim.issued", EVENT)
        until(lambda: handler.seen == ["v1"], "the event handled through the node that answers", seconds=30)
    assert queue_depth(amqp_vhost, "persist") == 0


def test_a_message_that_always_fails_is_parked_after_the_delivery_limit(amqp_vhost: str) -> None:
    handler = Recorder(lambda event: Result(Verdict.RETRY, "the SMTP server said try later"))
    with running(amqp_vhost, handler):
        until(lambda: queue_depth(amqp_vhost, "persist") == 0, "topology declared")
        publish_raw(amqp_vhost, "claim.issued", EVENT)
        until(lambda: queue_depth(amqp_vhost, "persist.parked") == 1, "the message parked")
    assert DELIVERY_LIMIT <= len(handler.seen) <= DELIVERY_LIMIT + 1, handler.seen
    assert [m["voucher_id"] for m in drain(amqp_vhost, "shopcardd.persist.parked")] == ["v1"]


def test_a_final_failure_is_parked_at_once(amqp_vhost: str) -> None:
    handler = Recorder(lambda event: Result(Verdict.PARK, "the recipient does not exist"))
    with running(amqp_vhost, handler):
        until(lambda: queue_depth(amqp_vhost, "persist") == 0, "topology declared")
        publish_raw(amqp_vhost, "claim.issued", EVENT)
        until(lambda: queue_depth(amqp_vhost, "persist.parked") == 1, "the message parked")
    assert handler.seen == ["v1"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\xff not json", "not JSON"),
        (b'{"type":"claim.issued","voucher_id":"v1"}', "deal_id is missing"),
        (b"[1, 2]", "not a JSON object"),
    ],
)
def test_a_message_no_worker_can_read_is_parked_at_once_with_the_reason_logged(
    amqp_vhost: str, body: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    handler = Recorder()
    with caplog.at_level(logging.WARNING, "shopcardd_backend.queue"), running(amqp_vhost, handler):
        until(lambda: queue_depth(amqp_vhost, "persist") == 0, "topology declared")
        publish_raw(amqp_vhost, "claim.issued", body)
        until(lambda: queue_depth(amqp_vhost, "persist.parked") == 1, "the message parked")
    assert handler.seen == [], "the handler never saw it"
    parked = [r for r in caplog.records if r.getMessage() == "event parked"]
    assert len(parked) == 1 and why in parked[0].reason  # type: ignore[attr-defined]


def test_a_dependency_that_is_down_holds_the_batch_instead_of_parking_it(amqp_vhost: str) -> None:
    """The store does not answer for a while: the batch waits, unacknowledged, and is done once
    the store is back; it never counts against the delivery limit."""
    failures = [3]

    class Flaky(Recorder):
        def handle(self, events: Sequence[Event]) -> list[Result]:
            if failures[0]:
                failures[0] -= 1
                raise TransientError("MongoDB: no server answers")
            return super().handle(events)

    handler = Flaky()
    with running(amqp_vhost, handler):
        until(lambda: queue_depth(amqp_vhost, "persist") == 0, "topology declared")
        publish_raw(amqp_vhost, "claim.issued", EVENT)
        until(lambda: handler.seen == ["v1"], "handled once the store is back")
    assert queue_depth(amqp_vhost, "persist.parked") == 0
