"""The workers' consumer: events from a RabbitMQ queue to a job's handler, through pika.

It follows pika's advice for long work: the connection's own thread only moves frames
(``process_data_events``), a worker thread runs the handler on a batch, and the acks go back
through ``add_callback_threadsafe``, so heartbeats never stall however long a batch takes
(a blocking connection busy in a handler misses its heartbeats and is dropped). Acks come only
after the handler said the work is durable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from ..events import BadEvent, Event, parse_event
from ..storage import TransientError
from ..workers.base import EventHandler, Result, Verdict, handle_batch
from .base import QueueUnavailable, queue_name
from .rabbitmq import AMQP_ERRORS, close_quietly, connect, declare_topology

log = logging.getLogger("shopcardd_backend.queue")


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
