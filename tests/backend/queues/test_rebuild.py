"""``deal rebuild`` after the claim gate lost a deal: it counts the store and the outbox, and
waits for the persist queue to drain rather than rebuild from an undercount."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from shopcardd_backend.queue.rabbitmq import RabbitPublisher, queue_depth
from shopcardd_backend.queue.rabbitmq_consumer import consume
from shopcardd_backend.relay import Relay
from shopcardd_backend.runtime import Runtime
from shopcardd_backend.settings import Settings
from shopcardd_backend.workers.persist import PersistHandler

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis]


def test_rebuild_counts_store_and_outbox_and_waits_for_the_persist_queue(
    redis_url: str, redis_prefix: str, amqp_vhost: str, tmp_path: Path
) -> None:
    env = {
        "SHOPCARDD_DATA_DIR": str(tmp_path / "data"),
        "SHOPCARDD_REDIS_URL": redis_url,
        "SHOPCARDD_REDIS_PREFIX": redis_prefix,
        "SHOPCARDD_AMQP_URL": amqp_vhost,
    }
    settings = Settings(**{name.removeprefix("SHOPCARDD_").lower(): value for name, value in env.items()})
    with Runtime(settings) as runtime:
        deal = runtime.deals.create(
            "m1",
            title="tea",
            stock=10,
            per_user_limit=1,
            voucher_ttl_seconds=600,
            starts_at=None,
            ends_at=None,
        ).deal
        for user in ("alice", "bob", "carol"):
            assert runtime.claims.claim_as(deal.deal_id, user, "k").voucher is not None
        with RabbitPublisher(amqp_vhost) as publisher:
            assert Relay(runtime.outbox, publisher, batch_size=2).relay_once() == 2  # one stays behind
        with redis.Redis.from_url(redis_url) as client:  # the gate loses the deal, not its outbox
            client.delete(*runtime.gate.deal_keys(deal.deal_id)[:-1])  # type: ignore[attr-defined]

    def rebuild(expect: int) -> subprocess.CompletedProcess[str]:
        exe = str(Path(sys.executable).with_name("shopcardd-backend"))
        done = subprocess.run(
            [exe, "deal", "rebuild", deal.deal_id],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == expect, done.stderr
        return done

    refused = rebuild(expect=1).stderr
    assert "2 claim events wait in the persist queue" in refused and "--force" in refused
    assert len(refused.strip().splitlines()) == 1

    with Runtime(settings) as runtime:
        stop = threading.Event()
        worker = threading.Thread(target=consume, args=(amqp_vhost, PersistHandler(runtime.store), stop))
        worker.start()
        deadline = time.monotonic() + 60
        while len(runtime.store.vouchers_of_deal(deal.deal_id)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        worker.join(30)
    assert queue_depth(amqp_vhost, "persist") == 0
    done = rebuild(expect=0).stdout
    assert "with 7 vouchers left (2 vouchers in the store, 1 more still in the outbox)" in done
