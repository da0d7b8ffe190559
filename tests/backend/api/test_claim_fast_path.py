"""The claim's fast path (``ClaimFastPath``) answers exactly as the FastAPI route does.

A claim with an empty body takes the fast path; the same claim with the body ``{}`` goes
through FastAPI's route (it validates bodies). Each case is sent both ways and the answers
must be the same bytes: status, body, content type, ``WWW-Authenticate``, ``Retry-After``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import Request

from shopcardd_backend.api.deps import get_claim_service
from shopcardd_backend.claims import ClaimService

from .conftest import Api

AS_JSON = {"Content-Type": "application/json"}


@pytest.fixture
def routed(api: Api) -> Iterator[list[str]]:
    """The idempotency keys of the claims that reached FastAPI's route (its dependency ran)."""
    keys: list[str] = []
    app = api.client.app
    runtime = app.state.runtime  # type: ignore[attr-defined]

    async def recording(request: Request) -> ClaimService:
        keys.append(request.headers.get("idempotency-key", ""))
        return runtime.claims

    app.dependency_overrides[get_claim_service] = recording  # type: ignore[attr-defined]
    yield keys
    app.dependency_overrides.clear()  # type: ignore[attr-defined]


def both_ways(api: Api, deal: str, token: str, key: str) -> tuple[httpx.Response, httpx.Response]:
    """The claim with an empty body (fast path), then with ``{}`` (the FastAPI route)."""
    fast = api.claim(deal, token, key)
    routed = api.claim(deal, token, key, content=b"{}", headers=AS_JSON)
    return fast, routed


def same_answer(first: httpx.Response, second: httpx.Response) -> None:
    assert first.status_code == second.status_code, (first.text, second.text)
    assert first.content == second.content
    for header in ("content-type", "content-length", "www-authenticate", "retry-after"):
        assert first.headers.get(header) == second.headers.get(header), header


def test_an_empty_body_takes_the_fast_path_and_a_retry_through_fastapi_gets_the_same_bytes(
    api: Api, routed: list[str]
) -> None:
    deal = api.create_deal(api.merchant_key("m1"), stock=5, per_user_limit=3)["deal_id"]
    token = api.user_token("alice")
    first = api.claim(deal, token, "k1")
    assert first.status_code == 201 and routed == []
    through_fastapi = api.claim(deal, token, "k1", content=b"{}", headers=AS_JSON)
    assert routed == ["k1"]
    replay = api.claim(deal, token, "k1")
    assert routed == ["k1"], "an empty-body replay stays on the fast path"
    same_answer(replay, through_fastapi)
    assert through_fastapi.status_code == 200
    assert first.content == replay.content and first.headers["content-type"] == "application/json"


def test_refusals_and_auth_failures_are_the_same_problems_both_ways(api: Api, routed: list[str]) -> None:
    key = api.merchant_key("m1")
    deal = api.create_deal(key, stock=1, per_user_limit=1)["deal_id"]
    alice, bob = api.user_token("alice"), api.user_token("bob")
    assert api.claim(deal, alice, "a1").status_code == 201
    later = api.create_deal(key, starts_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())["deal_id"]
    expired = api.user_token("carol", ttl=60, now=time.time() - 3600)
    cases = [
        (deal, alice, "a2", 409),  # limit_reached
        (deal, bob, "b1", 409),  # sold_out
        (later, alice, "a3", 403),  # sale_not_open
        ("no-such-deal", alice, "a4", 404),
        ("%E2%98%83", alice, "a5", 404),
        (deal, alice[:-4] + ("AAAA" if not alice.endswith("AAAA") else "BBBB"), "a6", 401),
        (deal, expired, "a7", 401),
        (deal, "not-a-jwt", "a8", 401),
        (deal, key, "a9", 401),  # a merchant key sent as a bearer token
    ]
    for deal_id, token, idempotency_key, status in cases:
        fast, through_fastapi = both_ways(api, deal_id, token, idempotency_key)
        assert fast.status_code == status, (deal_id, fast.text)
        same_answer(fast, through_fastapi)
    # Every case reached the route only when sent with a body (the claim service checks the
    # token, after the rate limit by address, so a bad token reaches it too).
    assert routed == [key for _, _, key, _ in cases]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "bearer {token}"},  # another spelling of the scheme
        {"Authorization": "Bearer  {token}"},  # padded
        {"Authorization": "Bearer {token}", "Content-Length": "2"},
        {"Authorization": "Bearer {token}", "Idempotency-Key": "k" * 129},
        {"Authorization": "Bearer {token}", "Idempotency-Key": "a key"},
        {"Idempotency-Key": "k"},
    ],
)
def test_requests_the_fast_path_cannot_answer_exactly_go_to_fastapi(
    api: Api, routed: list[str], headers: dict[str, str]
) -> None:
    deal = api.create_deal(api.merchant_key("m1"))["deal_id"]
    token = api.user_token("alice")
    sent = {"Idempotency-Key": "k1", **{k: v.format(token=token) for k, v in headers.items()}}
    content = b"{}" if "Content-Length" in sent else None
    answer = api.client.post(f"/v1/deals/{deal}/claims", headers=sent, content=content)
    assert answer.status_code in (201, 401, 422), answer.text
    if answer.status_code != 401:  # the route's dependency ran: FastAPI answered
        assert routed == [sent["Idempotency-Key"]]


def test_an_unforeseen_error_is_the_same_logged_500_both_ways(
    api: Api, routed: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The fast path answers ahead of the app's error middleware, so it answers an error nobody
    foresaw itself: the same problem document, logged with its traceback."""
    deal = api.create_deal(api.merchant_key("m1"))["deal_id"]
    token = api.user_token("alice")
    service = api.client.app.state.runtime.claims  # type: ignore[attr-defined]

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "claim", broken)
    fast, through_fastapi = both_ways(api, deal, token, "k1")
    assert routed == ["k1"]
    assert fast.status_code == 500 and fast.json()["code"] == "internal_error"
    same_answer(fast, through_fastapi)
    logged = [r for r in caplog.records if r.getMessage() == "unexpected error"]
    assert len(logged) == 2 and all(r.exc_info and "a bug" in str(r.exc_info[1]) for r in logged)
