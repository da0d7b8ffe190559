"""The composition root: ``Settings`` in, the open parts of the backend out. Knows no HTTP.

Every process starts here: the API's lifespan, each command (``merchant create``, ``deal
rebuild``), the relay and each queue worker. A part is opened on first use and closed with the
runtime, so a worker that never signs never makes a signing key, and a command that only needs
the store never connects to Redis. Parts are opened after any fork (in the lifespan of each
API process, in ``main()`` of a command), never at import: a client made before uvicorn forks
its worker processes would be shared by all of them.

    with Runtime(settings) as runtime:
        runtime.deals.create(...)
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Final

from .metrics import Metrics
from .settings import Settings, SettingsError
from .storage import Closing

if TYPE_CHECKING:
    from .claims import ClaimService
    from .deals import DealService
    from .devices import DeviceService
    from .gates.base import ClaimGate, ClaimPorts, Outbox, OutboxBacklog, RateCounter
    from .identity import UserTokenVerifier
    from .merchants import MerchantService
    from .queue.base import Publisher
    from .ratelimits import ClaimRateLimits
    from .signing import PublishedKeys, VoucherSigner
    from .stores.base import DocumentStore
    from .trust import TrustKey
    from .workers.base import EventHandler

log = logging.getLogger("shopcardd_backend.runtime")

RELAY_WAIT_WARNING_SECONDS: Final = 30.0
"""An event older than this in the outbox means no relay drains it: a running relay takes each
within about a second."""


class Runtime(Closing):
    """The backend's parts, built from ``settings`` on first use; ``close()`` closes them all."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.clock: Callable[[], float] = time.time
        """What the outbox's backlog is aged against (a test moves it on instead of waiting)."""
        self._stack = contextlib.ExitStack()

    @cached_property
    def store(self) -> DocumentStore:
        """MongoDB when ``SHOPCARDD_MONGODB_URI`` is set, else SQLite in the data folder."""
        if self.settings.mongodb_uri:
            from .stores.mongo import MongoDocumentStore

            store: DocumentStore = MongoDocumentStore(
                self.settings.mongodb_uri,
                self.settings.mongodb_database,
                stale_reads=self.settings.mongodb_read_preference,
            )
            self._stack.callback(store.close)
            store.ensure_indexes()
        else:
            from .stores.sqlite import SqliteDocumentStore

            store = SqliteDocumentStore(self.settings.make_data_dir() / "store.sqlite3")
            self._stack.callback(store.close)
        return store

    @cached_property
    def ports(self) -> ClaimPorts:
        """The claim gate's adapter, with its outbox and rate counters in the same store: Redis
        when ``SHOPCARDD_REDIS_URL`` is set, else SQLite in the data folder."""
        if self.settings.redis_url:
            from .gates.redis import RedisClaimGate

            settings = self.settings
            gate: ClaimPorts = RedisClaimGate(
                settings.redis_url,
                prefix=settings.redis_prefix,
                cluster=settings.redis_cluster,
                buckets=settings.redis_deal_buckets,
            )
        else:
            from .gates.sqlite import SqliteClaimGate

            gate = SqliteClaimGate(self.settings.make_data_dir() / "gate.sqlite3")
        self._stack.callback(gate.close)
        return gate

    @property
    def gate(self) -> ClaimGate:
        return self.ports

    @property
    def outbox(self) -> Outbox:
        return self.ports

    @property
    def rate_counter(self) -> RateCounter:
        return self.ports

    @cached_property
    def signer(self) -> VoucherSigner:
        """The voucher signing key of ``DATA_DIR/keys`` (made there on first start)."""
        from .signing import load_signer

        settings = self.settings
        settings.make_data_dir()
        kid = settings.signing_kid
        if kid is not None and not (settings.keys_dir / f"{kid}.private.pem").is_file():
            raise SettingsError(f"SHOPCARDD_SIGNING_KID: no private key {kid!r} in {settings.keys_dir}")
        return load_signer(settings.keys_dir, settings.signing_alg, kid)

    @cached_property
    def trust(self) -> TrustKey:
        """The key that signs sync answers, ``DATA_DIR/trust`` (made there on first use)."""
        from .trust import load_trust

        self.settings.make_data_dir()
        return load_trust(self.settings.trust_dir)

    @cached_property
    def users(self) -> UserTokenVerifier:
        from .identity import build_verifier

        return build_verifier(self.settings)

    @cached_property
    def claims(self) -> ClaimService:
        from .claims import ClaimService

        return ClaimService(
            self.gate, self.outbox, self.store, self.signer, self.metrics, self.rate_limits, self.users
        )

    @cached_property
    def rate_limits(self) -> ClaimRateLimits:
        """The claim rate limits of the settings, counted in the gate's store."""
        from .ratelimits import ClaimRateLimits

        settings = self.settings
        return ClaimRateLimits(
            self.rate_counter,
            settings.claim_rate_per_user,
            settings.claim_rate_per_address,
            settings.claim_rate_window_seconds,
        )

    @cached_property
    def deals(self) -> DealService:
        from .deals import DealService

        return DealService(self.gate, self.outbox, self.store, queue_backlog=self.queue_backlog)

    @cached_property
    def published_keys(self) -> PublishedKeys:
        """The voucher key set served and sent at sync, as ``DATA_DIR/keys/jwks.json`` holds it now."""
        from .signing import PublishedKeys

        return PublishedKeys(self.signer, self.settings.keys_dir / "jwks.json")

    @cached_property
    def devices(self) -> DeviceService:
        from .devices import DeviceService

        return DeviceService(
            self.store, self.published_keys.jwks, self.settings.keyset_valid_seconds, outbox=self.outbox
        )

    @cached_property
    def merchants(self) -> MerchantService:
        from .merchants import MerchantService

        return MerchantService(self.store, self.settings.keyset_valid_seconds)

    @cached_property
    def publisher(self) -> Publisher:
        """RabbitMQ (``SHOPCARDD_AMQP_URL``), the topology declared; the relay's way out."""
        from .queue.rabbitmq import RabbitPublisher

        if not self.settings.amqp_url:
            raise SettingsError("SHOPCARDD_AMQP_URL is not set: the relay publishes to RabbitMQ")
        publisher = RabbitPublisher(self.settings.amqp_url)
        self._stack.callback(publisher.close)
        return publisher

    def handler(self, job: str) -> EventHandler:
        """A new handler of ``job`` (one of ``workers.JOBS``) on this runtime's store and settings;
        the caller closes it."""
        if job == "persist":
            from .workers.persist import PersistHandler

            return PersistHandler(self.store)
        if job == "notify":
            from .workers.notify import NotifyHandler

            return NotifyHandler.from_settings(self.store, self.settings)
        if job == "analytics":
            from .workers.analytics import AnalyticsHandler

            return AnalyticsHandler(self.store)
        from .workers import JOBS

        raise ValueError(f"no worker {job!r}: choose one of {', '.join(JOBS)}")

    def queue_backlog(self) -> int:
        """Claim events relayed to RabbitMQ and not yet taken by the persist worker (0 without
        ``SHOPCARDD_AMQP_URL``: then the outbox is the whole backlog). ``QueueUnavailable``
        when the broker cannot be asked."""
        if not self.settings.amqp_url:
            return 0
        from .queue.rabbitmq import queue_depth

        return queue_depth(self.settings.amqp_url, "persist")

    def relay_backlog(self) -> OutboxBacklog | None:
        """With RabbitMQ named, what waits in the outbox for ``shopcardd-backend relay``, also set
        in the metrics' gauges; None in the embedded profile (this process's own pipeline drains
        the outbox) or when the outbox does not answer (readiness says so through the gate).
        For readiness, metrics scrapes and the console, never a claim."""
        if not self.settings.amqp_url:
            return None
        try:
            backlog = self.outbox.outbox_backlog()
        except ConnectionError as exc:  # GateUnavailable
            log.warning("outbox backlog not read", extra={"error": repr(exc)})
            return None
        self.metrics.outbox_seen(backlog.events, backlog.oldest_seconds(self.clock()))
        return backlog

    def relay_warning(self, backlog: OutboxBacklog | None) -> str | None:
        """The line that tells an operator no relay drains the outbox: None while the oldest event
        is younger than ``RELAY_WAIT_WARNING_SECONDS``."""
        if backlog is None or backlog.oldest_seconds(self.clock()) <= RELAY_WAIT_WARNING_SECONDS:
            return None
        return f"{backlog.events} claim events wait for the relay: is `shopcardd-backend relay` running?"

    def start_background(self) -> None:
        """The API process's own jobs, stopped when the runtime closes: refused-claim tallies into
        the outbox about once a second, and, without RabbitMQ, the outbox's events handed to the
        handlers in-process (``queue/inprocess.py``)."""
        from functools import partial

        from .loops import Background

        claims, outbox = self.claims, self.outbox
        # Closed in the reverse order: the loops stop, then the handlers close, then the last
        # refusal counts are written.
        self._stack.callback(claims.refusals.flush, outbox)
        pipeline = None
        if not self.settings.amqp_url:
            from .queue.inprocess import InProcessPipeline
            from .relay import consumer_name
            from .workers import JOBS

            pipeline = InProcessPipeline(outbox, [self.handler(job) for job in JOBS], consumer_name())
            self._stack.callback(pipeline.close)
        background = Background()
        self._stack.callback(background.close)
        background.start(partial(claims.refusals.flush, outbox), what="refusal tally", idle_wait=1.0)
        if pipeline is not None:
            background.start(pipeline.run_once, what="in-process queue", idle_wait=0.1)

    def open_api_parts(self) -> None:
        """Open what every request may need, so a bad setting or a dead store fails at start-up."""
        parts = ("store", "ports", "signer", "users", "claims", "rate_limits", "deals", "devices", "trust")
        for part in (*parts, "merchants"):
            getattr(self, part)

    async def aclose(self) -> None:
        """Close what the API's event loop opened (the gate's asyncio client), in that loop;
        then ``close()`` closes the rest."""
        if "ports" in self.__dict__:
            await self.ports.aclose()

    def close(self) -> None:
        self._stack.close()
