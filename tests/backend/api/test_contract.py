"""The HTTP contract of the claim API, run on the embedded and the scaled profile alike."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shopcardd_backend.app import create_app
from shopcardd_voucher import KeySet, Reason, verify

from .conftest import Api, assert_problem, build_settings, drop_database


def test_health_readiness_docs_and_metrics_answer(api: Api, profile: str) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    expected = "embedded" if profile == "embedded" else "scaled (gate redis, store mongo)"
    assert ready.json() == {"status": "ready", "profile": expected}
    assert api.client.get("/docs").status_code == 200
    paths = api.client.get("/openapi.json").json()["paths"]
    assert {
        "/v1/deals",
        "/v1/deals/{deal_id}",
        "/v1/deals/{deal_id}/claims",
        "/.well-known/jwks.json",
    } <= set(paths)
    metrics = api.client.get("/metrics")
    assert metrics.status_code == 200
    assert "shopcardd_claim_seconds" in metrics.text


@pytest.mark.mongo
def test_the_mongodb_indexes_are_made_at_start_up(
    tmp_path: Path, mongodb_uri: str, mongodb_database_name: str
) -> None:
    """Before the first request: the unique ones are what make a redelivered voucher harmless."""
    import pymongo

    settings = build_settings(
        tmp_path / "data", mongodb_uri=mongodb_uri, mongodb_database=mongodb_database_name
    )
    try:
        with TestClient(create_app(settings)), pymongo.MongoClient(mongodb_uri) as client:
            db = client[mongodb_database_name]
            indexes = {
                name: {ix["name"]: ix for ix in db[name].list_indexes()}
                for name in ("merchants", "deals", "vouchers")
            }
    finally:
        drop_database(mongodb_uri, mongodb_database_name)
    one_per_claim = indexes["vouchers"]["one_voucher_per_claim"]
    assert one_per_claim.get("unique") and list(one_per_claim["key"]) == [
        "deal_id",
        "user_id",
        "idempotency_key",
    ]
    assert list(indexes["vouchers"]["by_deal"]["key"]) == ["deal_id", "issued_at"]
    assert indexes["merchants"]["api_key_hash_unique"].get("unique")
    assert list(indexes["deals"]["by_merchant_newest"]["key"]) == ["merchant_id", "created_at", "_id"]


def test_merchant_creates_reads_and_cancels_a_deal(api: Api) -> None:
    key = api.merchant_key("m1")
    starts = datetime.now(UTC) - timedelta(minutes=1)
    deal = api.create_deal(key, stock=3, per_user_limit=1, starts_at=starts.isoformat())
    assert deal["merchant_id"] == "m1"
    assert deal["stock"] == deal["stock_left"] == 3
    assert deal["status"] == "active"
    assert datetime.fromisoformat(deal["starts_at"]) == starts.replace(microsecond=0)
    read = api.client.get(f"/v1/deals/{deal['deal_id']}").json()
    assert read == deal
    cancelled = api.client.post(f"/v1/deals/{deal['deal_id']}/cancel", headers={"X-API-Key": key})
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = api.client.post(f"/v1/deals/{deal['deal_id']}/cancel", headers={"X-API-Key": key})
    assert again.json()["status"] == "cancelled"
    refused = api.claim(deal["deal_id"], api.user_token("alice"), "k1")
    assert_problem(refused, 403, "sale_not_open")


def test_claim_gives_a_signed_voucher_and_a_retry_gives_the_same_one(api: Api) -> None:
    deal = api.create_deal(api.merchant_key("m1"), stock=5, per_user_limit=2, voucher_ttl_seconds=600)
    token = api.user_token("alice")
    first = api.claim(deal["deal_id"], token, "key-1")
    assert first.status_code == 201, first.text
    voucher = first.json()
    assert set(voucher) == {"voucher_id", "token", "deal_id", "merchant_id", "expires_at"}
    assert voucher["deal_id"] == deal["deal_id"] and voucher["merchant_id"] == "m1"
    retry = api.claim(deal["deal_id"], token, "key-1", json={})
    assert retry.status_code == 200
    assert retry.json() == voucher
    keys = KeySet.from_jwks(api.client.get("/.well-known/jwks.json").json())
    verdict = verify(voucher["token"], keys, merchant="m1")
    assert verdict.reason is Reason.ACCEPTED
    assert verdict.voucher is not None
    assert verdict.voucher.voucher_id == voucher["voucher_id"]
    assert verdict.voucher.user == "alice" and verdict.voucher.deal == deal["deal_id"]
    assert verdict.voucher.expires_at == int(datetime.fromisoformat(voucher["expires_at"]).timestamp())
    assert api.client.get(f"/v1/deals/{deal['deal_id']}").json()["stock_left"] == 4


def test_limit_then_sold_out(api: Api) -> None:
    deal = api.create_deal(api.merchant_key("m1"), stock=3, per_user_limit=2)["deal_id"]
    alice, bob, carol = (api.user_token(u) for u in ("alice", "bob", "carol"))
    assert api.claim(deal, alice, "a1").status_code == 201
    assert api.claim(deal, alice, "a2").status_code == 201
    assert_problem(api.claim(deal, alice, "a3"), 409, "limit_reached")
    assert api.claim(deal, bob, "b1").status_code == 201
    assert_problem(api.claim(deal, carol, "c1"), 409, "sold_out")
    assert api.client.get(f"/v1/deals/{deal}").json()["stock_left"] == 0


def test_sale_window_is_enforced(api: Api) -> None:
    key = api.merchant_key("m1")
    later = datetime.now(UTC) + timedelta(hours=1)
    future = api.create_deal(key, starts_at=later.isoformat())["deal_id"]
    assert_problem(api.claim(future, api.user_token("alice"), "k"), 403, "sale_not_open")
    # An end a few seconds ago is within the grace for the merchant's clock: created, and over.
    ended = api.create_deal(
        key,
        starts_at=(datetime.now(UTC) - timedelta(hours=2)).isoformat(),
        ends_at=(datetime.now(UTC) - timedelta(seconds=5)).isoformat(),
    )["deal_id"]
    assert_problem(api.claim(ended, api.user_token("alice"), "k"), 403, "sale_not_open")


def test_a_sale_that_could_never_open_is_refused_naming_ends_at(api: Api) -> None:
    headers = {"X-API-Key": api.merchant_key("m1")}
    good = {"title": "t", "stock": 1, "per_user_limit": 1, "voucher_ttl_seconds": 60}
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    for window, why in (
        ({"ends_at": hour_ago}, "in the past"),
        ({"starts_at": "2020-01-01T09:00:00Z", "ends_at": hour_ago}, "in the past"),
        ({"starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}, "after starts_at"),
        ({"starts_at": "2030-01-01T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}, "after starts_at"),
    ):
        answer = api.client.post("/v1/deals", json={**good, **window}, headers=headers)
        problem = assert_problem(answer, 422, "invalid_request")
        assert [e["loc"] for e in problem["errors"]] == ["body.ends_at"], problem
        assert problem["detail"].startswith("body.ends_at: ") and why in problem["detail"], problem
        assert "Value error" not in problem["detail"]


def test_unknown_deal_is_not_found(api: Api) -> None:
    assert_problem(api.client.get("/v1/deals/nope"), 404, "not_found")
    assert_problem(api.claim("nope", api.user_token("alice"), "k"), 404, "not_found")
    assert_problem(api.client.get("/v1/deals/" + "x" * 5000), 404, "not_found")
    assert_problem(api.client.get("/v1/deals/%00%20"), 404, "not_found")


def test_bad_claim_requests_are_4xx_problems(api: Api) -> None:
    deal = api.create_deal(api.merchant_key("m1"))["deal_id"]
    token = api.user_token("alice")
    url = f"/v1/deals/{deal}/claims"
    assert_problem(api.client.post(url, headers={"Idempotency-Key": "k"}), 401, "unauthorized")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert_problem(api.claim(deal, forged, "k"), 401, "unauthorized")
    assert_problem(api.claim(deal, "not-a-jwt", "k"), 401, "unauthorized")
    expired = api.user_token("alice", ttl=60, now=time.time() - 3600)
    assert_problem(api.claim(deal, expired, "k"), 401, "unauthorized")
    missing_key = api.client.post(url, headers={"Authorization": f"Bearer {token}"})
    assert_problem(missing_key, 422, "invalid_request")
    malformed = api.claim(
        deal, token, "k", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_problem(malformed, 422, "invalid_request")
    assert_problem(api.claim(deal, token, "k", json={"extra": 1}), 422, "invalid_request")
    assert_problem(api.claim(deal, token, "k", json=[1, 2]), 422, "invalid_request")
    assert api.client.get(f"/v1/deals/{deal}").json()["stock_left"] == 5


def test_a_body_that_is_not_a_json_object_is_told_what_to_send(api: Api) -> None:
    headers = {"X-API-Key": api.merchant_key("m1")}
    deal = json.dumps({"title": "t", "stock": 1, "per_user_limit": 1, "voucher_ttl_seconds": 60})
    form = {**headers, "Content-Type": "application/x-www-form-urlencoded"}  # what curl -d sends
    as_json = {**headers, "Content-Type": "application/json"}
    for answer, detail in (
        (
            api.client.post("/v1/deals", content=deal, headers=form),
            "body: must be JSON sent with Content-Type: application/json "
            "(not 'application/x-www-form-urlencoded')",
        ),
        (
            api.client.post("/v1/deals", content=deal, headers=headers),
            "body: must be JSON sent with Content-Type: application/json (none was sent)",
        ),
        (
            api.client.post("/v1/deals", content=b'{"title": "t",, }', headers=as_json),
            "body: not valid JSON (Expecting property name enclosed in double quotes at line 1, column 15)",
        ),
        (
            api.client.post("/v1/deals", content=b'{\n  "title": "t"\n  "stock": 1}', headers=as_json),
            "body: not valid JSON (Expecting ',' delimiter at line 3, column 3)",
        ),
        (api.client.post("/v1/deals", content=b"[1, 2]", headers=as_json), "body: must be a JSON object"),
        (api.client.post("/v1/deals", headers=headers), "body: required: a JSON object"),
    ):
        problem = assert_problem(answer, 422, "invalid_request")
        assert problem["detail"] == detail
        assert problem["errors"] == [{"loc": "body", "msg": detail.removeprefix("body: ")}]


def test_a_claim_body_is_empty_or_an_empty_object(api: Api) -> None:
    deal = api.create_deal(api.merchant_key("m1"), stock=5, per_user_limit=3)["deal_id"]
    token = api.user_token("alice")
    as_json = {"Content-Type": "application/json"}
    assert api.claim(deal, token, "none").status_code == 201
    assert api.claim(deal, token, "empty", content=b"", headers=as_json).status_code == 201
    assert api.claim(deal, token, "object", content=b" {} ", headers=as_json).status_code == 201
    for body in (b"null", b"[]", b'"{}"', b"0"):
        answer = api.claim(deal, token, "k", content=body, headers=as_json)
        problem = assert_problem(answer, 422, "invalid_request")
        assert problem["detail"] == "body: must be a JSON object", (body, problem)
    assert api.client.get(f"/v1/deals/{deal}").json()["stock_left"] == 2


def test_oversized_bodies_are_refused_unread(api: Api) -> None:
    deal = api.create_deal(api.merchant_key("m1"))["deal_id"]
    token = api.user_token("alice")
    big = b"{" + b" " * (16 * 1024) + b"}"
    with_length = api.claim(deal, token, "k", content=big, headers={"Content-Type": "application/json"})
    assert_problem(with_length, 413, "payload_too_large")

    def chunks():  # no Content-Length: sent chunked, cut off once past the limit
        for _ in range(1024):
            yield b" " * 1024

    chunked = api.claim(deal, token, "k", content=chunks(), headers={"Content-Type": "application/json"})
    assert_problem(chunked, 413, "payload_too_large")


def test_merchant_endpoints_need_the_right_key(api: Api) -> None:
    body = {"title": "t", "stock": 1, "per_user_limit": 1, "voucher_ttl_seconds": 60}
    assert_problem(api.client.post("/v1/deals", json=body), 401, "unauthorized")
    wrong = api.client.post("/v1/deals", json=body, headers={"X-API-Key": "sck_wrong"})
    assert_problem(wrong, 401, "unauthorized")
    owner, other = api.merchant_key("m1"), api.merchant_key("m2")
    deal = api.create_deal(owner)["deal_id"]
    refused = api.client.post(f"/v1/deals/{deal}/cancel", headers={"X-API-Key": other})
    assert_problem(refused, 403, "forbidden")
    assert api.client.get(f"/v1/deals/{deal}").json()["status"] == "active"


def test_bad_deal_bodies_are_invalid_requests(api: Api) -> None:
    headers = {"X-API-Key": api.merchant_key("m1")}
    good = {"title": "t", "stock": 1, "per_user_limit": 1, "voucher_ttl_seconds": 60}
    for bad in (
        {**good, "stock": 0},
        {**good, "stock": "many"},
        {**good, "per_user_limit": -1},
        {k: v for k, v in good.items() if k != "title"},
        {**good, "starts_at": "2030-01-01T00:00:00"},  # no time zone
    ):
        assert_problem(api.client.post("/v1/deals", json=bad, headers=headers), 422, "invalid_request")
    malformed = api.client.post("/v1/deals", content=b'{"title": ', headers=headers)
    assert_problem(malformed, 422, "invalid_request")


def test_wrong_json_types_are_refused_not_coerced(api: Api) -> None:
    headers = {"X-API-Key": api.merchant_key("m1")}
    good = {"title": "t", "stock": 5, "per_user_limit": 1, "voucher_ttl_seconds": 60}
    for bad in (
        {**good, "stock": "5"},
        {**good, "stock": True},
        {**good, "stock": 5.0},
        {**good, "per_user_limit": "1"},
        {**good, "voucher_ttl_seconds": False},
        {**good, "title": 7},
        {**good, "title": "half\u0000price"},
        {**good, "title": "two\nlines"},
        {**good, "starts_at": 1_900_000_000},  # a number is not an RFC 3339 time
    ):
        answer = api.client.post("/v1/deals", json=bad, headers=headers)
        assert assert_problem(answer, 422, "invalid_request")["errors"], bad
    created = api.client.post("/v1/deals", json={**good, "title": "Café crème ☕"}, headers=headers)
    assert created.status_code == 201 and created.json()["stock"] == 5


OUT_OF_RANGE_TIMES = [
    "9999-12-31T23:59:59-23:59",  # year 10000 in UTC: past what a datetime holds
    "0001-01-01T00:00:00+00:01",  # year 0 in UTC
    "1999-12-31T23:59:59Z",
    "1970-01-01T00:00:00Z",
    "9999-12-31T23:59:59-00:01",  # valid as written, 10000-01-01 in UTC
]


def test_times_out_of_range_are_invalid_requests_naming_the_field(api: Api) -> None:
    headers = {"X-API-Key": api.merchant_key("m1")}
    good = {"title": "t", "stock": 1, "per_user_limit": 1, "voucher_ttl_seconds": 60}
    for field in ("starts_at", "ends_at"):
        for value in OUT_OF_RANGE_TIMES:
            answer = api.client.post("/v1/deals", json={**good, field: value}, headers=headers)
            problem = assert_problem(answer, 422, "invalid_request")
            assert field in problem["detail"], (field, value, problem)
            assert [e["loc"] for e in problem["errors"]] == [f"body.{field}"], problem
            assert "2000" in problem["detail"] and "9999" in problem["detail"]
    # The bounds themselves are accepted, read back and claimable against.
    edges = {"starts_at": "2000-01-01T00:00:00Z", "ends_at": "9999-12-31T23:59:59Z"}
    created = api.client.post("/v1/deals", json={**good, **edges}, headers=headers)
    assert created.status_code == 201, created.text
    deal = created.json()
    assert datetime.fromisoformat(deal["ends_at"]) == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert api.client.get(f"/v1/deals/{deal['deal_id']}").json() == deal
    assert api.claim(deal["deal_id"], api.user_token("alice"), "k").status_code == 201


def test_unknown_routes_and_methods_are_problems(api: Api) -> None:
    assert_problem(api.client.get("/v2/anything"), 404, "not_found")
    assert_problem(api.client.delete("/v1/deals"), 405, "method_not_allowed")


def test_head_answers_like_get_without_a_body(api: Api) -> None:
    deal = api.create_deal(api.merchant_key("m1"))["deal_id"]
    for path in ("/healthz", "/readyz", f"/v1/deals/{deal}", "/.well-known/jwks.json", "/metrics"):
        got, head = api.client.get(path), api.client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
    assert api.client.head("/v1/deals/no-such-deal").status_code == 404
    assert api.client.head("/v1/deals/no-such-deal/claims").status_code == 405  # POST only
    assert_problem(api.client.put("/healthz"), 405, "method_not_allowed")


def test_claim_metrics_count_outcomes(api: Api) -> None:
    deal = api.create_deal(api.merchant_key("m1"), stock=1, per_user_limit=1)["deal_id"]
    api.claim(deal, api.user_token("alice"), "k")
    api.claim(deal, api.user_token("bob"), "k")
    text = api.client.get("/metrics").text
    assert 'shopcardd_claims_total{outcome="issued"} 1.0' in text
    assert 'shopcardd_claims_total{outcome="sold_out"} 1.0' in text


def test_odd_requests_never_get_a_500(api: Api) -> None:
    deal = api.create_deal(api.merchant_key("m1"))["deal_id"]
    token = api.user_token("alice")
    odd_auth = [
        "Bearer",
        "Bearer ",
        "Basic YWxpY2U6cHc=",
        "Bearer " + "a" * 8000,
        "Bearer e30.e30.",
        "Bearer ...",
    ]
    for auth in odd_auth:
        answer = api.client.post(
            f"/v1/deals/{deal}/claims", headers={"Authorization": auth, "Idempotency-Key": "k"}
        )
        assert_problem(answer, 401, "unauthorized")
    for key in ["", " ", "k" * 129, "ключ".encode()]:
        answer = api.claim(deal, token, "x", headers={"Idempotency-Key": key})
        assert answer.status_code == 422, (key, answer.text)
    for deal_id in ["%7Bx%7D", "%E2%98%83", "a}b{c", "..", "x" * 300]:
        assert api.claim(deal_id, token, "k").status_code == 404
        assert api.client.get(f"/v1/deals/{deal_id}").status_code == 404
    for body in [b'"text"', b"1e999", b"{}" * 10, b"\xff\xfe"]:
        answer = api.claim(deal, token, "k", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 422, (body, answer.text)
    empty = api.claim(deal, token, "k", content=b"", headers={"Content-Type": "application/json"})
    assert empty.status_code == 201


def test_a_merchant_lists_its_own_deals_newest_first_page_by_page(api: Api) -> None:
    key, other = api.merchant_key("m1"), api.merchant_key("m2")
    made = [api.create_deal(key, title=f"deal {n}")["deal_id"] for n in range(5)]
    api.create_deal(other, title="not yours")
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/v1/deals", params=params, headers={"X-API-Key": key})
        assert page.status_code == 200, page.text
        body = page.json()
        assert all(d["merchant_id"] == "m1" and d["stock_left"] == d["stock"] == 5 for d in body["deals"])
        seen += [d["deal_id"] for d in body["deals"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1] and pages == 3
    assert_problem(
        api.client.get("/v1/deals", params={"cursor": "nonsense"}, headers={"X-API-Key": key}),
        422,
        "invalid_request",
    )
    assert_problem(api.client.get("/v1/deals"), 401, "unauthorized")


@pytest.mark.parametrize("title", ["   ", "\u3000 \u00a0"])
def test_a_blank_title_is_refused(api: Api, title: str) -> None:
    refused = api.client.post(
        "/v1/deals",
        json={"title": title, "stock": 1, "per_user_limit": 1, "voucher_ttl_seconds": 60},
        headers={"X-API-Key": api.merchant_key("m1")},
    )
    assert "blank" in assert_problem(refused, 422, "invalid_request")["detail"]


def test_a_merchant_key_sent_as_a_bearer_token_is_named_as_such(api: Api) -> None:
    key = api.merchant_key("m1")
    deal = api.create_deal(key)["deal_id"]
    bearer = {"Authorization": f"Bearer {key}"}
    as_merchant = api.client.post("/v1/deals", json={}, headers=bearer)
    assert "use the X-API-Key header" in assert_problem(as_merchant, 401, "unauthorized")["detail"]
    as_user = api.client.post(f"/v1/deals/{deal}/claims", headers={**bearer, "Idempotency-Key": "k"})
    assert "merchant's API key" in assert_problem(as_user, 401, "unauthorized")["detail"]


def test_a_too_long_voucher_lifetime_is_told_in_days(api: Api) -> None:
    refused = api.client.post(
        "/v1/deals",
        json={"title": "Forever", "stock": 1, "per_user_limit": 1, "voucher_ttl_seconds": 10**9},
        headers={"X-API-Key": api.merchant_key("m1")},
    )
    problem = assert_problem(refused, 422, "invalid_request")
    assert "voucher_ttl_seconds: must be at most 366 days (31622400 seconds)" in problem["detail"]
