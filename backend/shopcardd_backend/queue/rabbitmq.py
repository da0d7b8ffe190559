"""RabbitMQ through pika: the topology, the relay's publisher and the workers' consumer.

The only module that imports pika. pika's errors are mapped to ``QueueUnavailable`` here.

The consumer (``consume``) follows pika's advice for long work (a connection whose thread is
busy in a handler misses its heartbeats and is dropped by the broker): the connection's
own thread only moves frames (``process_data_events``), a worker thread runs the handler on a
batch, and the acks go back through ``add_callback_threadsafe``, so heartbeats never stall
however long a batch takes. Acks come only after the handler said the work is durable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from ..events import BadEvent, Event, parse_event
from ..gates.base import OutboxEvent
from ..storage import Closing, TransientError
from ..workers.base import EventHandler, Result, Verdict, handle_batch
from .base import (
    BINDINGS,
    DELIVERY_LIMIT,
    EXCHANGE,
    PARKED_EXCHANGE,
    QueueUnavailable,
    parked_queue_name,
    queue_name,
)

log = logging.getLogger("shopcardd_backend.queue")
AMQP_ERRORS = (pika.exceptions.AMQPError, OSError)
"""What pika raises when the broker is gone, refuses, or closes the channel."""


def connect(url: str, heartbeat: int = 30) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = 30
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.client_properties = {"connection_name": "shopcardd-backend"}
    try:
        return pika.BlockingConnection(params)
    except AMQP_ERRORS as exc:
        raise QueueUnavailable(f"RabbitMQ at {_where(url)} cannot be reached: {exc!r}") from exc


def _where(url: str) -> str:
    """The URL without its credentials, for messages and logs."""
    params = pika.URLParameters(url)
    return f"{params.host}:{params.port}{params.virtual_host if params.virtual_host != '/' else ''}"


def declare_topology(channel: BlockingChannel, delivery_limit: int = DELIVERY_LIMIT) -> None:
    """Declare the exchanges, queues, parking queues and bindings; harmless when they exist."""
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

        params = pika.URLParameters(self.url)
        params.heartbeat = 30
        params.connection_attempts = 1

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
            self.close()
            raise QueueUnavailable(
                f"RabbitMQ at {_where(self.url)} cannot be reached: {failure or 'timeout'}"
            )

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


@dataclass(slots=True)
class _Delivery:
    tag: int
    event: Event | None
    problem: str = ""


class _Batches:
    """The consumer's state on the connection's thread: deliveries waiting, the batch in work."""

    def __init__(self, handler: EventHandler) -> None:
        self.handler = handler
        self.waiting: list[_Delivery] = []
        self.in_work: Future[list[Result]] | None = None
        self.first_waiting_at = 0.0


def consume(
    url: str,
    handler: EventHandler,
    stop: threading.Event,
    *,
    prefetch: int | None = None,
    max_wait: float = 0.05,
    backoff: Callable[[int], float] = lambda attempt: min(30.0, 0.5 * 2**attempt),
) -> None:
    """Run ``handler`` on its queue until ``stop`` is set; then finish the batch in hand and
    return. A lost connection is re-established with backoff, logged once per outage."""
    attempt = 0
    outage_logged = False
    while not stop.is_set():
        try:
            connection = connect(url)
        except QueueUnavailable as exc:
            if not outage_logged:
                log.warning("broker unreachable; retrying with backoff", extra={"error": str(exc)})
                outage_logged = True
            stop.wait(backoff(attempt))
            attempt += 1
            continue
        if outage_logged:
            log.info("broker reachable again", extra={"job": handler.name})
        attempt, outage_logged = 0, False
        try:
            _consume_on(connection, handler, stop, prefetch or max(2 * handler.batch_size, 10), max_wait)
        except AMQP_ERRORS as exc:
            log.warning("broker connection lost; reconnecting", extra={"error": repr(exc)})
            outage_logged = True
        finally:
            close_quietly(connection)


def _consume_on(
    connection: pika.BlockingConnection,
    handler: EventHandler,
    stop: threading.Event,
    prefetch: int,
    max_wait: float,
) -> None:
    channel = connection.channel()
    declare_topology(channel)
    channel.basic_qos(prefetch_count=prefetch)
    batches = _Batches(handler)

    def on_message(ch: BlockingChannel, method: Any, properties: Any, body: bytes) -> None:
        try:
            event: Event | None = parse_event(body)
            problem = ""
            if event.type not in handler.event_types:
                event, problem = None, f"{handler.name} does not take {event.type} events"
        except BadEvent as exc:
            event, problem = None, str(exc)
        if not batches.waiting:
            batches.first_waiting_at = time.monotonic()
        batches.waiting.append(_Delivery(method.delivery_tag, event, problem))

    tag = channel.basic_consume(queue_name(handler.name), on_message)
    log.info("worker consuming", extra={"job": handler.name, "queue": queue_name(handler.name)})
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{handler.name}-work") as pool:
        while True:
            connection.process_data_events(time_limit=max_wait)
            if batches.in_work is None and batches.waiting:
                full = len(batches.waiting) >= handler.batch_size
                if full or stop.is_set() or time.monotonic() - batches.first_waiting_at >= max_wait:
                    _start_batch(connection, channel, batches, pool, stop)
            if stop.is_set() and batches.in_work is None:
                if tag is not None:
                    channel.basic_cancel(tag)  # deliveries still in flight come back to on_message
                    tag = None
                    continue
                if not batches.waiting:
                    return


def _start_batch(
    connection: pika.BlockingConnection,
    channel: BlockingChannel,
    batches: _Batches,
    pool: ThreadPoolExecutor,
    stop: threading.Event,
) -> None:
    """Hand the waiting deliveries to the worker thread; its acks come back threadsafe."""
    size = batches.handler.batch_size
    batch, batches.waiting = batches.waiting[:size], batches.waiting[size:]
    if batches.waiting:
        batches.first_waiting_at = time.monotonic()
    handler = batches.handler

    def work() -> list[Result]:
        events = [d.event for d in batch if d.event is not None]
        try:
            results = iter(_handle_until_done(handler, events, stop) if events else [])
        except Exception as exc:  # a bug in a handler: log it, requeue (parked at the delivery limit)
            log.exception("worker's handler failed", extra={"job": handler.name})
            results = iter([Result(Verdict.RETRY, f"handler failed: {exc!r}")] * len(events))
        verdicts = [next(results) if d.event is not None else Result(Verdict.PARK, d.problem) for d in batch]
        connection.add_callback_threadsafe(lambda: _settle(channel, batch, verdicts, handler.name, batches))
        return verdicts

    batches.in_work = pool.submit(work)


def _handle_until_done(handler: EventHandler, events: list[Event], stop: threading.Event) -> list[Result]:
    """The handler's results; while its dependency is down, back off and try again (the batch
    stays unacknowledged, so nothing is lost and nothing counts against the delivery limit)."""
    attempt = 0
    while True:
        try:
            return handle_batch(handler, events)
        except TransientError as exc:
            if attempt == 0:
                log.warning(
                    "worker's dependency is down; retrying", extra={"job": handler.name, "error": str(exc)}
                )
            delay = min(30.0, 0.5 * 2**attempt)
            attempt += 1
            if stop.wait(delay) and attempt > 3:
                # Stopping: give the batch back (unacknowledged messages return to the queue).
                return [Result(Verdict.RETRY, f"stopped while the dependency was down: {exc}")] * len(events)
            continue


def _settle(
    channel: BlockingChannel, batch: list[_Delivery], results: list[Result], job: str, batches: _Batches
) -> None:
    """On the connection's thread: requeue or park the deliveries that need it, then ack the rest
    at once (``multiple``: one frame, not one flushed frame per message, which cost the persist
    worker most of its time). That ack covers exactly this batch's done deliveries: tags come in
    order, the batches before it are settled and the deliveries still waiting came after it."""
    last_done = 0
    for delivery, result in zip(batch, results, strict=True):
        if result.verdict is Verdict.DONE:
            last_done = max(last_done, delivery.tag)
        elif result.verdict is Verdict.RETRY:
            channel.basic_nack(delivery.tag, requeue=True)
        else:
            log.warning(
                "event parked",
                extra={"job": job, "reason": result.reason, "event_id": _event_id(delivery.event)},
            )
            channel.basic_reject(delivery.tag, requeue=False)
    if last_done:
        channel.basic_ack(last_done, multiple=True)
    batches.in_work = None


def _event_id(event: Event | None) -> str | None:
    return None if event is None else event.event_id
