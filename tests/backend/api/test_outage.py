"""A Redis outage: 503 with Retry-After at once (no hang), and no claim lost across it.

The test runs a Redis server of its own (the ``spare_redis`` fixture) so it can stop and
restart it without touching the machine's Redis.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from servers import SpareRedis
from shopcardd_backend.app import create_app
from shopcardd_backend.deals import DealNotFound
from shopcardd_backend.gates.base import GateUnavailable

from .conftest import Api, assert_problem, build_settings


def test_redis_outage_is_503_with_retry_after_and_loses_no_claim(
    spare_redis: SpareRedis, tmp_path: Path
) -> None:
    settings = build_settings(tmp_path / "data", redis_url=spare_redis.url, redis_prefix="outage")
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        deal = api.create_deal(api.merchant_key("m1"), stock=5, per_user_limit=5)["deal_id"]
        token = api.user_token("alice")
        before = api.claim(deal, token, "k1")
        assert before.status_code == 201

        spare_redis.stop()
        down = assert_problem(api.claim(deal, token, "k2"), 503, "unavailable")
        assert "detail" in down
        assert int(api.claim(deal, token, "k2").headers["Retry-After"]) >= 1
        assert_problem(client.get("/readyz"), 503, "unavailable")
        assert client.get("/healthz").status_code == 200

        spare_redis.start()
        answers = [api.claim(deal, token, "k1") for _ in range(3)]
        replay = next(a for a in answers if a.status_code != 503)
        assert replay.status_code == 200
        assert replay.json()["voucher_id"] == before.json()["voucher_id"]
        assert api.claim(deal, token, "k2").status_code == 201
        assert client.get("/readyz").status_code == 200


def test_a_deal_the_gate_lost_waits_for_the_operator_to_rebuild_it(
    spare_redis: SpareRedis, tmp_path: Path
) -> None:
    """Never restored behind the operator's back: the store may not hold every voucher yet."""
    settings = build_settings(tmp_path / "data", redis_url=spare_redis.url, redis_prefix="lost")
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        key = api.merchant_key("m1")
        deal = api.create_deal(key, stock=5)["deal_id"]
        cancelled = api.create_deal(key, stock=5)["deal_id"]
        client.post(f"/v1/deals/{cancelled}/cancel", headers={"X-API-Key": key})
        cancelled_after = api.create_deal(key, stock=5)["deal_id"]
        redis.Redis.from_url(spare_redis.url).flushall()

        lost = api.claim(deal, api.user_token("alice"), "k")
        assert_problem(lost, 503, "unavailable")
        assert lost.headers["Retry-After"] == "60"
        read = client.get(f"/v1/deals/{deal}")  # no stock is invented for it
        assert_problem(read, 503, "unavailable")
        assert read.headers["Retry-After"] == "60"
        cancel = client.post(f"/v1/deals/{cancelled_after}/cancel", headers={"X-API-Key": key})
        assert_problem(cancel, 503, "unavailable")

        deals = client.app.state.runtime.deals  # type: ignore[attr-defined]

        def rebuild_deal(deal_id: str) -> int:
            return deals.rebuild(deal_id).stock_left

        assert rebuild_deal(deal) == 5
        assert client.get(f"/v1/deals/{deal}").json()["stock_left"] == 5
        assert rebuild_deal(cancelled) == 5
        assert rebuild_deal(cancelled_after) == 5, "cancelled while lost"
        assert_problem(api.claim(cancelled_after, api.user_token("alice"), "k"), 403, "sale_not_open")
        after = client.post(f"/v1/deals/{cancelled_after}/cancel", headers={"X-API-Key": key})
        assert after.status_code == 200 and after.json()["status"] == "cancelled"
        with pytest.raises(DealNotFound):
            rebuild_deal("no-such-deal")
        assert api.claim(deal, api.user_token("alice"), "k").status_code == 201
        assert rebuild_deal(deal) == 4, "a held deal is left alone"
        assert_problem(api.claim(cancelled, api.user_token("alice"), "k"), 403, "sale_not_open")


def test_readiness_fails_unless_redis_refuses_to_evict(spare_redis: SpareRedis, tmp_path: Path) -> None:
    """An evicted users or claims hash would silently reset a deal's limits and replays."""
    settings = build_settings(tmp_path / "data", redis_url=spare_redis.url, redis_prefix="evict")
    admin = redis.Redis.from_url(spare_redis.url)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        admin.config_set("maxmemory-policy", "allkeys-lru")
        assert_problem(client.get("/readyz"), 503, "unavailable")
        with pytest.raises(GateUnavailable, match=r"maxmemory-policy is allkeys-lru.*noeviction"):
            client.app.state.runtime.gate.check()  # type: ignore[attr-defined]
        admin.config_set("maxmemory-policy", "noeviction")
        assert client.get("/readyz").status_code == 200


def test_readiness_passes_when_redis_refuses_config_get(spare_redis: SpareRedis, tmp_path: Path) -> None:
    """A managed Redis may not allow CONFIG: the policy cannot be read, so it is not held against it."""
    spare_redis.stop()
    spare_redis.start("--maxmemory-policy", "allkeys-lru", "--rename-command", "CONFIG", "")
    with pytest.raises(redis.ResponseError):
        redis.Redis.from_url(spare_redis.url).config_get("maxmemory-policy")
    settings = build_settings(tmp_path / "data", redis_url=spare_redis.url, redis_prefix="noconfig")
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
