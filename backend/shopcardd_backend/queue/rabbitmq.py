"""RabbitMQ through pika: the connection, the topology and the relay's publisher.

With ``rabbitmq_consumer.py`` (the workers' consumer) the only modules that import pika.
pika's errors are mapped to ``QueueUnavailable`` here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from ..gates.base import OutboxEvent
from ..settings import amqp_node_urls
from ..storage import Closing
from .base import (
    BINDINGS,
    DELIVERY_LIMIT,
    EXCHANGE,
    PARKED_EXCHANGE,
    RETIRED_BINDINGS,
    QueueUnavailable,
    parked_queue_name,
    queue_name,
)

log = logging.getLogger("shopcardd_backend.queue")
AMQP_ERRORS = (pika.exceptions.AMQPError, OSError)
"""What pika raises when the broker is gone, refuses, or closes the channel."""


def node_parameters(url: str, **options: Any) -> list[pika.URLParameters]:
    """The parameters of each node ``url`` names (``SHOPCARDD_AMQP_URL``: one node, or a cluster's
    nodes comma-separated), in its order, each with ``options`` set: pika tries them in turn, so
    a node that stops costs a reconnection to another, not an outage until it is back."""
    nodes = [pika.URLParameters(node) for node in amqp_node_urls(url)]
    for params in nodes:
        for name, value in options.items():
            setattr(params, name, value)
    return nodes


def connect(url: str, heartbeat: int = 30) -> pika.BlockingConnection:
    """A connection to the first node of ``url`` that answers."""
    nodes = node_parameters(
        url,
        heartbeat=heartbeat,
        blocked_connection_timeout=30,
        connection_attempts=1,
        socket_timeout=5,
        client_properties={"connection_name": "shopcardd-backend"},
    )
    try:
        return pika.BlockingConnection(nodes)
    except AMQP_ERRORS as exc:
        raise QueueUnavailable(f"RabbitMQ at {_where(url)} cannot be reached: {exc!r}") from exc


def _where(url: str) -> str:
    """The nodes of the URL without their credentials, for messages and logs."""
    nodes = node_parameters(url)
    vhost = nodes[0].virtual_host
    return ", ".join(f"{params.host}:{params.port}" for params in nodes) + (vhost if vhost != "/" else "")


def declare_topology(channel: BlockingChannel, delivery_limit: int = DELIVERY_LIMIT) -> None:
    """Declare the exchanges, queues, parking queues and bindings; harmless when they exist.
    Bindings of earlier versions (``RETIRED_BINDINGS``) are removed."""
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange_declare(PARKED_EXCHANGE, exchange_type="direct", durable=True)
    for job, routing_keys in BINDINGS.items():
        queue, parked = queue_name(job), parked_queue_name(job)
        channel.queue_declare(parked, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(parked, PARKED_EXCHANGE, routing_key=queue)
        channel.queue_declare(
            queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": delivery_limit,
                "x-dead-letter-exchange": PARKED_EXCHANGE,
                "x-dead-letter-routing-key": queue,
            },
        )
        for key in routing_keys:
            channel.queue_bind(queue, EXCHANGE, routing_key=key)
        for key in RETIRED_BINDINGS.get(job, ()):
            channel.queue_unbind(queue, EXCHANGE, routing_key=key)  # harmless when not bound


def queue_depth(url: str, job: str) -> int:
    """Messages ready in a job's queue (not those a worker holds unacknowledged)."""
    connection = connect(url)
    try:
        channel = connection.channel()
        declare_topology(channel)
        return int(channel.queue_declare(queue_name(job), passive=True).method.message_count)
    except AMQP_ERRORS as exc:
        raise QueueUnavailable(f"RabbitMQ at {_where(url)}: {exc!r}") from exc
    finally:
        close_quietly(connection)


def close_quietly(connection: pika.BlockingConnection | None) -> None:
    """Close a connection that may already be broken; nothing to report either way."""
    if connection is not None and connection.is_open:
        with contextlib.suppress(*AMQP_ERRORS):
            connection.close()


class _Confirms:
    """The confirms awaited for one published batch (delivery tags first..last)."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.confirmed: set[int] = set()
        self.failure = ""
        self.done = threading.Event()

    def fail(self, why: str) -> None:
        self.failure = self.failure or why
        self.done.set()


class RabbitPublisher(Closing):
    """``Publisher`` with publisher confirms awaited per batch, not per message.

    Waiting for each message's confirm costs a broker round trip and a quorum queue's disk
    write apiece (about 350 events/s here); so the publisher runs pika's ``SelectConnection`` on
    a thread of its own, sends a whole batch, and waits until the broker confirmed all of it.
    Messages are persistent and ``mandatory`` (an event no queue takes comes back: an error,
    not a silent loss), with the event's id as ``message_id``. After any failure the connection
    is dropped and the next batch opens a new one."""

    def __init__(self, url: str, confirm_timeout: float = 30.0) -> None:
        self.url = url
        self.confirm_timeout = confirm_timeout
        self._connection: pika.SelectConnection | None = None
        self._channel: Any = None
        self._thread: threading.Thread | None = None
        self._next_tag = 0
        self._batch: _Confirms | None = None

    def _open(self) -> None:
        if self._connection is not None and self._connection.is_open and self._channel is not None:
            return
        self.close()
        declared = connect(self.url)  # declare with a plain connection: errors surface here, at once
        try:
            declare_topology(declared.channel())
        finally:
            close_quietly(declared)
        failures: list[str] = []
        for params in node_parameters(self.url, heartbeat=30, connection_attempts=1):
            failure = self._open_on(params)
            if not failure:
                return
            self.close()
            failures.append(f"{params.host}:{params.port}: {failure}")
        raise QueueUnavailable(f"RabbitMQ at {_where(self.url)} cannot be reached: {'; '.join(failures)}")

    def _open_on(self, params: pika.URLParameters) -> str:
        """Open the publishing connection and its channel on one node; why it failed, or ``""``."""
        opened = threading.Event()
        failure: list[str] = []

        def on_channel(channel: Any) -> None:
            channel.confirm_delivery(self._on_confirm, callback=lambda _frame: opened.set())
            channel.add_on_return_callback(self._on_return)
            channel.add_on_close_callback(
                lambda _ch, reason: self._lost(connection, f"channel closed: {reason!r}")
            )
            self._channel = channel

        def on_open_error(_connection: Any, error: BaseException | str) -> None:
            failure.append(repr(error))
            opened.set()

        def on_close(conn: pika.SelectConnection, reason: BaseException) -> None:
            self._lost(conn, f"connection closed: {reason!r}")
            opened.set()
            conn.ioloop.stop()

        connection = pika.SelectConnection(
            params,
            on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
        )
        self._connection, self._next_tag = connection, 0
        self._thread = threading.Thread(target=connection.ioloop.start, name="amqp-publisher", daemon=True)
        self._thread.start()
        if not opened.wait(10) or failure or self._channel is None:
            return failure[0] if failure else "timeout"
        return ""

    def _on_confirm(self, frame: Any) -> None:
        batch, method = self._batch, frame.method
        if batch is None:
            return
        if isinstance(method, pika.spec.Basic.Nack):
            batch.fail("the broker refused (nack) an event")
            return
        tag = method.delivery_tag
        if method.multiple:
            batch.confirmed.update(range(batch.first, min(tag, batch.last) + 1))
        elif batch.first <= tag <= batch.last:
            batch.confirmed.add(tag)
        if len(batch.confirmed) >= batch.last - batch.first + 1:
            batch.done.set()

    def _on_return(self, _channel: Any, method: Any, _properties: Any, _body: bytes) -> None:
        if self._batch is not None:
            self._batch.fail(f"no queue took an event (routing key {method.routing_key!r})")

    def _lost(self, connection: pika.SelectConnection, why: str) -> None:
        """The connection (or its channel) closed: fail the batch awaiting confirms on it."""
        if connection is not self._connection:
            return  # an older connection, already replaced
        self._channel = None
        if self._batch is not None:
            self._batch.fail(why)

    def publish(self, events: Sequence[OutboxEvent]) -> None:
        if not events:
            return
        self._open()
        assert self._connection is not None
        batch = _Confirms(self._next_tag + 1, self._next_tag + len(events))
        self._next_tag += len(events)
        self._batch = batch
        messages = [_message(event.payload, event.event_id) for event in events]

        def send() -> None:
            try:
                for routing_key, body, properties in messages:
                    self._channel.basic_publish(EXCHANGE, routing_key, body, properties, mandatory=True)
            except Exception as exc:  # on the I/O thread: report, never raise into the loop
                batch.fail(repr(exc))

        self._connection.ioloop.add_callback_threadsafe(send)
        if not batch.done.wait(self.confirm_timeout):
            batch.fail(f"no confirm within {self.confirm_timeout:g} s")
        self._batch = None
        if batch.failure:
            self.close()
            raise QueueUnavailable(f"RabbitMQ did not take the batch: {batch.failure}")

    def close(self) -> None:
        connection, thread = self._connection, self._thread
        self._connection, self._thread, self._channel = None, None, None
        if connection is None:
            return

        def stop() -> None:  # on the I/O thread; a clean close ends in on_close, which stops the loop
            if connection.is_open:
                connection.close()
            elif not connection.is_closing:
                connection.ioloop.stop()

        with contextlib.suppress(*AMQP_ERRORS, RuntimeError):
            connection.ioloop.add_callback_threadsafe(stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)


def _message(payload: dict[str, Any], outbox_id: str) -> tuple[str, bytes, pika.BasicProperties]:
    """Routing key, body and properties of an outbox event."""
    kind = str(payload.get("type", "claim.issued"))
    properties = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=str(payload.get("voucher_id") or payload.get("event_id") or outbox_id),
        type=kind,
    )
    return kind, _json(payload), properties


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
