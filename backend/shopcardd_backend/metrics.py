"""Prometheus metrics: claims by outcome, claim latency, and the outbox's backlog.

Each app gets its own registry (tests build many apps in one process). With several worker
processes (``serve --workers N``) the ``serve`` command points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh folder before the workers start; prometheus-client then keeps each process's values in
files there and ``/metrics`` adds them up across processes. With one process the figures
are that process's own.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.claims = Counter(
            "shopcardd_claims",
            "Claims decided, by outcome (issued, replayed, sold_out, limit_reached, sale_not_open, "
            "unknown_deal, rate_limited, unavailable)",
            ["outcome"],
            registry=self.registry,
        )
        self.claim_seconds = Histogram(
            "shopcardd_claim_seconds",
            "Time to decide a claim and sign its voucher, seconds",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Set when /metrics is scraped or /readyz asked (Runtime.relay_backlog), never by a claim.
        # Every process sees the same outbox: the most recent look of a live process is the figure.
        self.outbox_events = Gauge(
            "shopcardd_outbox_events",
            "Claim events waiting in the outbox for shopcardd-backend relay (with RabbitMQ named)",
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.outbox_oldest_seconds = Gauge(
            "shopcardd_outbox_oldest_seconds",
            "How long the oldest event in the outbox has waited for the relay, seconds (0: none)",
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self._by_outcome: dict[str, Counter] = {}
        """Each outcome's child of ``claims``: ``labels()`` finds it under a lock, claim by claim."""

    def claim_done(self, outcome: str, seconds: float | None) -> None:
        """Count a claim's outcome; ``seconds`` None for one refused before it was timed."""
        counter = self._by_outcome.get(outcome)
        if counter is None:
            counter = self._by_outcome[outcome] = self.claims.labels(outcome=str(outcome))
        counter.inc()
        if seconds is not None:
            self.claim_seconds.observe(seconds)

    def outbox_seen(self, events: int, oldest_seconds: float) -> None:
        self.outbox_events.set(events)
        self.outbox_oldest_seconds.set(oldest_seconds)

    def render(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
