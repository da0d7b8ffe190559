"""Relays and workers killed with SIGKILL at random moments, as a power cut or the OOM killer
would: nothing accepted is lost, nothing is stored twice. Real processes, real RabbitMQ."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shopcardd_backend.gates.base import OutboxEvent
from shopcardd_backend.queue.rabbitmq import RabbitPublisher, queue_depth
from waiting import until

from .conftest import NOW, claim_many, drain, open_deal

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]
BACKEND = str(Path(sys.executable).with_name("shopcardd-backend"))


def _start(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([BACKEND, *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


@pytest.mark.redis
def test_a_relay_killed_again_and_again_loses_no_event(
    make_gate: Any, redis_url: str, redis_prefix: str, amqp_vhost: str, tmp_path: Path
) -> None:
    gate = make_gate("redis", prefix=redis_prefix)
    open_deal(gate)
    env = {
        **os.environ,
        "SHOPCARDD_DATA_DIR": str(tmp_path / "data"),
        "SHOPCARDD_REDIS_URL": redis_url,
        "SHOPCARDD_REDIS_PREFIX": redis_prefix,
        "SHOPCARDD_AMQP_URL": amqp_vhost,
    }
    log = tmp_path / "relay.log"
    rng = random.Random(7)
    issued: list[str] = []
    relay = _start(env, "relay", "--lease", "1", "--batch", "50", log=log)
    for round_ in range(8):
        issued += claim_many(gate, 250, start=250 * round_)
        time.sleep(rng.uniform(0.0, 0.4))  # let it get somewhere, then cut it off mid-work
        _kill(relay)
        relay = _start(env, "relay", "--lease", "1", "--batch", "50", log=log)
    until(lambda: not gate.read_outbox(limit=1), "the outbox drained after the last restart")
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(30) == 0, log.read_text()[-2000:]
    published = [m["voucher_id"] for m in drain(amqp_vhost, "shopcardd.persist")]
    assert set(published) == set(issued), "every claim event reached the queue"
    print(f"{len(issued)} events, {len(published) - len(issued)} published twice after a kill")


@pytest.mark.parametrize("store_kind", ["sqlite", pytest.param("mongo", marks=pytest.mark.mongo)])
def test_a_persist_worker_killed_mid_batch_loses_and_duplicates_nothing(
    store_kind: str, make_store: Any, amqp_vhost: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = {**os.environ, "SHOPCARDD_DATA_DIR": str(tmp_path / "data"), "SHOPCARDD_AMQP_URL": amqp_vhost}
    if store_kind == "mongo":
        database = f"{request.getfixturevalue('mongodb_database_name')}_kill"
        env |= {"SHOPCARDD_MONGODB_URI": request.getfixturevalue("mongodb_uri")}
        env |= {"SHOPCARDD_MONGODB_DATABASE": database}
        store = make_store("mongo", database="kill")
        assert store.database_name == database
    else:
        store = make_store("sqlite", path=tmp_path / "data" / "store.sqlite3")
    total = 3000
    events = [
        OutboxEvent(
            str(n),
            {
                "type": "claim.issued",
                "voucher_id": f"v{n}",
                "deal_id": "d1",
                "merchant_id": "m1",
                "user_id": f"u{n}",
                "idempotency_key": "k",
                "issued_at": NOW,
                "expires_at": NOW + 3600,
            },
        )
        for n in range(total)
    ]
    with RabbitPublisher(amqp_vhost) as publisher:
        publisher.publish(events)
    log = tmp_path / "worker.log"
    worker = _start(env, "worker", "persist", log=log)

    def stored() -> int:
        return len(store.vouchers_of_deal("d1"))

    for kills in range(3):
        until(lambda k=kills: stored() > (k + 1) * total // 5, "the worker making progress")
        _kill(worker)
        started_at = log.stat().st_size
        worker = _start(env, "worker", "persist", log=log)
    until(lambda: stored() == total and queue_depth(amqp_vhost, "persist") == 0, "every voucher stored")
    # The last one may have found nothing left to do: SIGTERM once it is running, not starting.
    until(lambda: "worker consuming" in log.read_text()[started_at:], "the last worker consuming")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, log.read_text()[-2000:]
    vouchers = store.vouchers_of_deal("d1")
    assert sorted(v.voucher_id for v in vouchers) == sorted(e.payload["voucher_id"] for e in events)
    assert queue_depth(amqp_vhost, "persist.parked") == 0


def test_sigterm_ends_the_relay_and_a_worker_cleanly(amqp_vhost: str, tmp_path: Path) -> None:
    env = {**os.environ, "SHOPCARDD_DATA_DIR": str(tmp_path / "data"), "SHOPCARDD_AMQP_URL": amqp_vhost}
    for args in (["relay"], ["worker", "persist"]):
        log = tmp_path / f"{args[0]}.log"
        proc = _start(env, *args, log=log)
        started = "relay started" if args == ["relay"] else "worker consuming"
        until(lambda log=log, started=started: started in log.read_text(), f"{args} started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
        assert "Traceback" not in log.read_text()
