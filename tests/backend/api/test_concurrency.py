"""Claims under concurrency, through the ASGI app over HTTP semantics (httpx, 64 in flight),
on both profiles (SQLite gate; the machine's real Redis gate).

5,000 claims from 500 users for a stock of 100 with a limit of 2: exactly the stock is
issued, nobody holds more than the limit, no voucher id twice, every token verifies, and the
claim events hold exactly the issued claims (the API process hands them on to the store
itself: once the outbox has drained, the store holds each issued voucher once). The same with
every Idempotency-Key sent four times at once (clients retrying): one voucher per key, the
same token on every answer. And one key sent many times at once gives one voucher.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from shopcardd_backend.app import create_app
from shopcardd_backend.identity import dev_identity_key, mint_user_token, register_merchant
from shopcardd_backend.settings import Settings
from shopcardd_voucher import KeySet, Reason, verify

USERS, CLAIMS, IN_FLIGHT, STOCK, LIMIT = 500, 5_000, 64, 100, 2
RETRIES = 4
"""How often each Idempotency-Key is sent, all at once, in the retried flood."""


async def with_client(
    settings: Settings, body: Callable[[httpx.AsyncClient, FastAPI], Awaitable[Any]]
) -> Any:
    # One address sending thousands of claims at once is what the rate limits refuse; this suite
    # tests the gate under concurrency, so they are off (test_rate_limits.py tests them).
    app = create_app(settings.model_copy(update={"claim_rate_per_user": 0, "claim_rate_per_address": 0}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await body(client, app)


async def new_deal(client: httpx.AsyncClient, app: FastAPI, stock: int, limit: int) -> str:
    key = register_merchant(app.state.runtime.store, "m1")
    body = {"title": "flash", "stock": stock, "per_user_limit": limit, "voucher_ttl_seconds": 3600}
    response = await client.post("/v1/deals", json=body, headers={"X-API-Key": key})
    assert response.status_code == 201, response.text
    return response.json()["deal_id"]


async def fire(client: httpx.AsyncClient, requests: list[tuple[str, str, str]]) -> list[httpx.Response]:
    """Send (deal, token, idempotency key) claims with at most IN_FLIGHT at once."""
    limiter = asyncio.Semaphore(IN_FLIGHT)

    async def one(deal: str, token: str, key: str) -> httpx.Response:
        async with limiter:
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
            return await client.post(f"/v1/deals/{deal}/claims", headers=headers)

    return await asyncio.gather(*(one(*request) for request in requests))


def user_tokens(settings: Settings) -> dict[str, str]:
    identity = dev_identity_key(settings)
    return {f"u{i}": mint_user_token(identity, settings.user_issuer, f"u{i}", 3600) for i in range(USERS)}


async def recorded_voucher_ids(app: FastAPI, deal: str) -> list[str]:
    """The voucher id of every claim event of the deal: without RabbitMQ the API process itself
    moves them from the outbox to the store, so wait for the outbox to drain, then read both."""
    runtime = app.state.runtime
    deadline = time.monotonic() + 120
    while runtime.gate.read_outbox(limit=1, deal_id=deal) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    pending = [event.payload["voucher_id"] for event in runtime.gate.read_outbox(limit=None, deal_id=deal)]
    return sorted([*pending, *(voucher.voucher_id for voucher in runtime.store.vouchers_of_deal(deal))])


@pytest.mark.slow
@pytest.mark.xdist_group("floods")  # one flood at a time: side by side they starved each other
def test_a_flood_of_claims_issues_exactly_the_stock(settings: Settings) -> None:
    tokens = user_tokens(settings)

    async def body(client: httpx.AsyncClient, app: FastAPI) -> tuple[list[httpx.Response], Any, list[str]]:
        deal = await new_deal(client, app, STOCK, LIMIT)
        requests = [(deal, tokens[f"u{n % USERS}"], f"key-{n}") for n in range(CLAIMS)]
        random.Random(4).shuffle(requests)
        responses = await fire(client, requests)
        jwks = (await client.get("/.well-known/jwks.json")).json()
        left = (await client.get(f"/v1/deals/{deal}")).json()["stock_left"]
        assert left == 0
        return responses, jwks, await recorded_voucher_ids(app, deal)

    responses, jwks, recorded = asyncio.run(with_client(settings, body))
    statuses = Counter(r.status_code for r in responses)
    assert statuses[201] == STOCK, statuses
    refusals = Counter(r.json()["code"] for r in responses if r.status_code != 201)
    assert set(refusals) <= {"sold_out", "limit_reached"}, refusals
    assert sum(refusals.values()) == CLAIMS - STOCK
    keys = KeySet.from_jwks(jwks)
    vouchers = [r.json() for r in responses if r.status_code == 201]
    assert len({v["voucher_id"] for v in vouchers}) == STOCK
    holders: Counter[str] = Counter()
    for voucher in vouchers:
        verdict = verify(voucher["token"], keys, merchant="m1")
        assert verdict.reason is Reason.ACCEPTED
        assert verdict.voucher is not None and verdict.voucher.voucher_id == voucher["voucher_id"]
        holders[verdict.voucher.user] += 1
    assert max(holders.values()) <= LIMIT
    assert recorded == sorted(v["voucher_id"] for v in vouchers), (
        "the claim events must be exactly the issued claims"
    )


@pytest.mark.slow
@pytest.mark.xdist_group("floods")  # one flood at a time: side by side they starved each other
def test_retried_claims_get_one_voucher_per_key(settings: Settings) -> None:
    """Every key sent RETRIES times at once, shuffled into the flood: still the stock exactly."""
    tokens = user_tokens(settings)
    keys = [(f"u{n % USERS}", f"key-{n}") for n in range(CLAIMS // RETRIES)]

    async def body(
        client: httpx.AsyncClient, app: FastAPI
    ) -> tuple[list[Any], list[httpx.Response], list[str]]:
        deal = await new_deal(client, app, STOCK, LIMIT)
        sent = [(user, key) for user, key in keys for _ in range(RETRIES)]
        random.Random(5).shuffle(sent)
        responses = await fire(client, [(deal, tokens[user], key) for user, key in sent])
        return sent, responses, await recorded_voucher_ids(app, deal)

    sent, responses, recorded = asyncio.run(with_client(settings, body))
    answers: defaultdict[tuple[str, str], list[httpx.Response]] = defaultdict(list)
    for request, response in zip(sent, responses, strict=True):
        answers[request].append(response)
    issued: dict[tuple[str, str], str] = {}
    for (user, key), replies in answers.items():
        statuses = Counter(r.status_code for r in replies)
        if 201 in statuses:
            assert statuses == {201: 1, 200: RETRIES - 1}, (key, statuses)
            assert len({r.json()["token"] for r in replies}) == 1, key
            issued[(user, key)] = replies[0].json()["voucher_id"]
        else:
            assert {r.json()["code"] for r in replies} <= {"sold_out", "limit_reached"}, (key, statuses)
    assert len(issued) == STOCK
    assert len(set(issued.values())) == STOCK
    assert max(Counter(user for user, _ in issued).values()) <= LIMIT
    assert recorded == sorted(issued.values()), "the claim events must be exactly the issued claims"


def test_one_idempotency_key_sent_at_once_many_times_gives_one_voucher(settings: Settings) -> None:
    token = mint_user_token(dev_identity_key(settings), settings.user_issuer, "alice", 3600)

    async def body(client: httpx.AsyncClient, app: FastAPI) -> tuple[list[httpx.Response], int]:
        deal = await new_deal(client, app, stock=10, limit=5)
        responses = await fire(client, [(deal, token, "same-key")] * 40)
        return responses, (await client.get(f"/v1/deals/{deal}")).json()["stock_left"]

    responses, left = asyncio.run(with_client(settings, body))
    assert sorted(Counter(r.status_code for r in responses).items()) == [(200, 39), (201, 1)]
    assert len({r.json()["voucher_id"] for r in responses}) == 1
    assert len({r.json()["token"] for r in responses}) == 1
    assert left == 9
