"""Helpers of the queue suites: read what reached a RabbitMQ queue, make claims on a gate, name a
RabbitMQ node that is down."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika

from servers import free_port
from shopcardd_backend.gates.base import ClaimAttempt, ClaimGate, DealTerms

NOW = 1_790_000_000


def drain(url: str, queue: str) -> list[dict[str, Any]]:
    """Take every message ready in ``queue`` (acknowledged: they are gone after)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        bodies = []
        while True:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(json.loads(body))
    finally:
        connection.close()


def publish_raw(url: str, routing_key: str, body: bytes) -> None:
    """One message straight to the events exchange, as a relay would send it (or a bad one)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("shopcardd.events", routing_key, body, mandatory=True)
    finally:
        connection.close()


def open_deal(gate: ClaimGate, deal_id: str = "d1", stock: int = 100_000) -> None:
    gate.load_deal(DealTerms(deal_id, "m1", stock, per_user_limit=stock, voucher_ttl_seconds=3600))


def claim_many(gate: ClaimGate, count: int, deal_id: str = "d1", start: int = 0) -> list[str]:
    """``count`` issued claims; their voucher ids."""
    ids = []
    for n in range(start, start + count):
        decision = gate.claim(ClaimAttempt(deal_id, f"u{n}", f"k{n}", f"v{deal_id}{n}", NOW))
        assert decision.voucher is not None, decision
        ids.append(decision.voucher.voucher_id)
    return ids


def down_node(url: str) -> str:
    """``url`` (one node, its credentials and vhost) on a loopback port nobody listens on: a node
    of the cluster that is down, refusing connections."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{free_port()}".lstrip("@")))
