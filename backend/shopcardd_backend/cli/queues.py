"""The long-running queue commands: ``relay`` (outbox to RabbitMQ) and ``worker`` (one job's queue)."""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import threading
from typing import TYPE_CHECKING

from shopcardd_commands.commandline import CommandParser, whole_number

from ..workers import JOBS
from .common import UsageError, load_settings

if TYPE_CHECKING:
    from ..settings import Settings


def add_commands(sub: argparse._SubParsersAction[CommandParser]) -> None:
    """The ``relay`` and ``worker`` subcommands and their options."""
    relay = sub.add_parser(
        "relay",
        help="relay the outbox's claim events to RabbitMQ (long-running; SIGTERM ends it)",
        description="Move the claim events of the outbox (Redis streams, or the SQLite outbox) to "
        "RabbitMQ (SHOPCARDD_AMQP_URL) with publisher confirms; an event leaves the outbox only "
        "once RabbitMQ confirmed it. Several relays may run at once and share the work; the events "
        "a relay that died had taken are taken over once its lease (--lease) runs out. Declares "
        "the exchange and queues it needs. Runs until SIGTERM or SIGINT, then finishes the batch "
        "in hand and exits 0. Logs one JSON line per event of note on stderr.",
    )
    relay.add_argument(
        "--batch", type=whole_number(1, 10_000), default=500, help="events per batch (default 500)"
    )
    relay.add_argument(
        "--lease",
        type=whole_number(1, 3600),
        default=30,
        metavar="SECONDS",
        help="how long an event taken by a relay is its own before another may take it over (default 30)",
    )
    worker = sub.add_parser(
        "worker",
        help="run a queue worker: persist, notify or analytics (long-running; SIGTERM ends it)",
        description="Consume one job's queue on RabbitMQ (SHOPCARDD_AMQP_URL): persist stores each "
        "issued voucher in the document store; notify emails (SHOPCARDD_SMTP_URL) and texts "
        "(SHOPCARDD_SMS_URL) the customer, once per voucher; analytics counts the claims refused "
        "per deal and minute (GET /v1/deals/{deal_id}/stats; the claims issued are counted from the "
        "vouchers stored). Acknowledges a message only once its work is durable; a message that "
        "cannot be read, or fails for good, is parked in "
        "the job's .parked queue; one that keeps failing is parked after a few deliveries. A lost "
        "broker is reconnected with backoff. SIGTERM or SIGINT finishes the batch in hand, exit 0.",
    )
    worker.add_argument("name", choices=list(JOBS), metavar="JOB", help="persist, notify or analytics")
    worker.add_argument(
        "--prefetch",
        type=whole_number(1, 10_000),
        default=None,
        help="messages RabbitMQ may hand over before they are acknowledged (default: twice a batch)",
    )


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: a long-running command finishes what it holds, then exits 0.

    The handler does not set the event itself. A handler runs in the main thread between two
    steps of whatever it was doing, and that may be inside ``stop.wait()``, holding the event's
    own lock: ``set()`` there would wait for that lock forever, and the process would never end.
    The handler only puts the signal in a ``SimpleQueue`` (safe to call from a handler), and a
    thread of its own sets the event."""
    stop = threading.Event()
    received: queue.SimpleQueue[int] = queue.SimpleQueue()

    def set_stop() -> None:
        received.get()
        stop.set()

    threading.Thread(target=set_stop, name="stop-on-signal", daemon=True).start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: received.put(signum))
    return stop


def _queue_settings(what: str) -> Settings:
    """The settings of a long-running queue command, logging set up; RabbitMQ is required."""
    from ..logging import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level)
    logging.getLogger("pika").setLevel(max(logging.WARNING, logging.getLogger().level))  # a line a frame
    if not settings.amqp_url:
        raise UsageError(
            f"SHOPCARDD_AMQP_URL is not set: {what} RabbitMQ (without it, the API processes "
            "handle the outbox themselves)"
        )
    return settings


def cmd_relay(args: argparse.Namespace) -> int:
    from ..relay import Relay
    from ..runtime import Runtime

    settings = _queue_settings("the relay publishes to")
    stop = stop_on_signals()
    with Runtime(settings) as runtime:
        Relay(runtime.outbox, runtime.publisher, batch_size=args.batch, lease_seconds=args.lease).run(stop)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from ..queue.rabbitmq_consumer import consume
    from ..runtime import Runtime

    settings = _queue_settings("workers consume")
    stop = stop_on_signals()
    with Runtime(settings) as runtime:
        handler = runtime.handler(args.name)
        try:
            consume(str(settings.amqp_url), handler, stop, prefetch=args.prefetch)
        finally:
            handler.close()
    return 0
