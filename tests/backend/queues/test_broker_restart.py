"""Fault drill: RabbitMQ restarted while claims pour in loses no event.

The broker is one of the test's own (``spare_rabbitmq``: its own node, ports and database), never
the machine's, which other suites share. A relay publishes claim events from the outbox while
claims keep coming; the broker is stopped, left down, and started again, twice. Afterwards every
event issued is in the ``shopcardd.persist`` queue: duplicates allowed (a batch whose confirm was
lost is published again), none lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from servers import SpareRabbitMQ
from shopcardd_backend.gates.base import ClaimGate
from shopcardd_backend.queue.rabbitmq import RabbitPublisher
from shopcardd_backend.relay import Relay
from waiting import until

from .conftest import claim_many, drain, open_deal

pytestmark = pytest.mark.slow

CLAIMS_PER_STEP = 150
OUTAGES = 2


def _claim_steadily(gate: ClaimGate, stop: threading.Event, issued: list[str]) -> None:
    """Claims in small steps until stopped, as a sale's traffic would keep coming."""
    while not stop.is_set():
        issued += claim_many(gate, 10, start=len(issued))
        time.sleep(0.01)


def test_a_broker_restarted_under_load_loses_no_event(
    make_gate: Callable[..., ClaimGate], spare_rabbitmq: SpareRabbitMQ
) -> None:
    gate = make_gate("sqlite")
    open_deal(gate, stock=10**6)
    stop_claims, stop_relay = threading.Event(), threading.Event()
    issued: list[str] = []
    publisher = RabbitPublisher(spare_rabbitmq.url, confirm_timeout=5)
    relay = Relay(gate, publisher, batch_size=50, lease_seconds=5)
    claimer = threading.Thread(target=_claim_steadily, args=(gate, stop_claims, issued))
    relaying = threading.Thread(target=relay.run, args=(stop_relay,))
    claimer.start()
    relaying.start()
    try:
        for _ in range(OUTAGES):
            until(lambda: relay.stats.published >= len(issued) // 2 > 0, "the relay publishing")
            spare_rabbitmq.stop()  # claims go on into the outbox while the broker is down
            before = len(issued)
            until(lambda before=before: len(issued) >= before + CLAIMS_PER_STEP, "claims while down")
            spare_rabbitmq.start()
        stop_claims.set()
        claimer.join(60)
        until(lambda: not gate.read_outbox(limit=1), "the outbox drained after the restarts", 120)
    finally:
        stop_claims.set()
        stop_relay.set()
        claimer.join(60)
        relaying.join(60)
        publisher.close()
    published = [message["voucher_id"] for message in drain(spare_rabbitmq.url, "shopcardd.persist")]
    assert len(issued) > OUTAGES * CLAIMS_PER_STEP
    assert set(published) == set(issued), f"lost: {sorted(set(issued) - set(published))[:10]}"

