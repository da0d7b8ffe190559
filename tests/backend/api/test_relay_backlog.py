"""A queue nobody drains: with RabbitMQ named and no ``shopcardd-backend relay`` running, the
claim events stay in the outbox and the figures stand still. Readiness and the metrics say so;
the process stays ready, as it still serves claims."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shopcardd_backend.app import create_app
from shopcardd_backend.settings import Settings

from .conftest import Api, build_settings, delete_redis_keys, drop_database

WARNING = "2 claim events wait for the relay: is `shopcardd-backend relay` running?"


@pytest.fixture
def scaled(
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    mongodb_uri: str,
    mongodb_database_name: str,
    amqp_url: str,
) -> Iterator[Settings]:
    """The scaled profile with RabbitMQ named: claims leave through the relay alone."""
    yield build_settings(
        tmp_path / "data",
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        mongodb_uri=mongodb_uri,
        mongodb_database=mongodb_database_name,
        amqp_url=amqp_url,
    )
    delete_redis_keys(redis_url, redis_prefix)
    drop_database(mongodb_uri, mongodb_database_name)


def _gauge(metrics: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    assert found, metrics
    return float(found.group(1))


def test_readyz_and_metrics_show_the_backlog_no_relay_drains(scaled: Settings) -> None:
    with TestClient(create_app(scaled)) as client:
        api = Api(client, scaled)
        deal = api.create_deal(api.merchant_key("cafe"))["deal_id"]
        assert client.get("/readyz").json() == {
            "status": "ready",
            "profile": "scaled (gate redis, store mongo)",
            "outbox": {"events": 0, "oldest_seconds": 0.0},
        }
        for user in ("alice", "bob"):
            assert api.claim(deal, api.user_token(user), "k1").status_code == 201
        fresh = client.get("/readyz")
        assert fresh.status_code == 200
        assert fresh.json()["outbox"]["events"] == 2
        assert "detail" not in fresh.json(), "a relay takes events within a second: no warning yet"

        client.app.state.runtime.clock = lambda: time.time() + 60  # type: ignore[attr-defined]
        stalled = client.get("/readyz")
        assert stalled.status_code == 200, "a backlog is a warning, not a reason to stop serving"
        body = stalled.json()
        assert body["status"] == "ready" and body["outbox"]["oldest_seconds"] >= 60
        assert body["detail"] == WARNING
        metrics = client.get("/metrics").text
        assert _gauge(metrics, "shopcardd_outbox_events") == 2
        assert _gauge(metrics, "shopcardd_outbox_oldest_seconds") >= 60
