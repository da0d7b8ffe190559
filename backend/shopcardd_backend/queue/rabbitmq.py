"""RabbitMQ through pika: the topology, the relay's publisher and the workers' consumer.

The only module that imports pika. pika's errors are mapped to ``QueueUnavailable`` here.

The consumer (``consume``) follows pika's advice for long work (STYLE trap 3): the connection's
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
from ..workers.base import EventHandler, Result, Verdict
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


class RabbitPublisher(Closing):
    """``Publisher`` on one connection with publisher confirms; reconnects on the next batch
    after a failure. Messages are persistent, ``mandatory`` (an event no queue takes is an
    error, not a silent loss), with the event's id as ``message_id``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def _open(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self.close()
            self._connection = connect(self.url)
            channel = self._connection.channel()
            declare_topology(channel)
            channel.confirm_delivery()
            self._channel = channel
        return self._channel

    def publish(self, events: Sequence[OutboxEvent]) -> None:
        try:
            channel = self._open()
            for event in events:
                payload = event.payload
                channel.basic_publish(
                    EXCHANGE,
                    routing_key=str(payload.get("type", "claim.issued")),
                    body=_json(payload),
                    properties=pika.BasicProperties(
                        content_type="application/json",
                        delivery_mode=pika.DeliveryMode.Persistent,
                        message_id=str(
                            payload.get("voucher_id") or payload.get("event_id") or event.event_id
                        ),
                        type=str(payload.get("type", "claim.issued")),
                    ),
                    mandatory=True,
                )
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            self.close()
            raise QueueUnavailable(f"RabbitMQ did not take an event: {exc!r}") from exc
        except AMQP_ERRORS as exc:
            self.close()
            raise QueueUnavailable(f"RabbitMQ at {_where(self.url)}: {exc!r}") from exc

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        close_quietly(connection)


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
            results = handler.handle(events)
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
        if len(results) != len(events):
            raise RuntimeError(f"{handler.name} answered {len(results)} results for {len(events)} events")
        return results


def _settle(
    channel: BlockingChannel, batch: list[_Delivery], results: list[Result], job: str, batches: _Batches
) -> None:
    """On the connection's thread: ack, requeue or park each delivery of a finished batch."""
    for delivery, result in zip(batch, results, strict=True):
        if result.verdict is Verdict.DONE:
            channel.basic_ack(delivery.tag)
        elif result.verdict is Verdict.RETRY:
            channel.basic_nack(delivery.tag, requeue=True)
        else:
            log.warning(
                "event parked",
                extra={"job": job, "reason": result.reason, "event_id": _event_id(delivery.event)},
            )
            channel.basic_reject(delivery.tag, requeue=False)
    batches.in_work = None


def _event_id(event: Event | None) -> str | None:
    return None if event is None else event.event_id
