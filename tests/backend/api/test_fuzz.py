"""No request, however malformed, gets a 500: a bounded property test over every route.

Hypothesis composes requests from the API's own routes (and some it does not have), real and
made-up deal ids, every method, good, forged, expired and junk credentials, odd
``Idempotency-Key`` and ``Content-Type`` values, and bodies from valid deals to random JSON and
random bytes. Every answer must be a success, or an RFC 9457 problem document whose ``code``
is one of the API's codes with that code's status (``Retry-After`` where the code promises
it). Run on both profiles; the app (and its stores) lives across the examples, as a server
would, so the requests also meet deals that earlier examples sold out or cancelled.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shopcardd_backend.api.errors import CODES, PROBLEM_JSON

from .conftest import Api

EXAMPLES = 300
RETRY_AFTER_CODES = {"rate_limited", "unavailable"}
ENDPOINTS = [
    ("POST", "/v1/deals"),
    ("GET", "/v1/deals/{deal}"),
    ("POST", "/v1/deals/{deal}/claims"),
    ("POST", "/v1/deals/{deal}/claims"),  # twice: the route that matters most
    ("POST", "/v1/deals/{deal}/cancel"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
]
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]

# Header values as a client could send them: any byte but CR, LF and NUL (which no HTTP/1.1
# server lets through to the app).
header_bytes = st.binary(max_size=300).map(lambda b: b.translate(None, b"\r\n\x00"))
printable_key = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=140)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
deal_bodies = st.fixed_dictionaries(
    {},
    optional={
        "title": json_values | st.text(max_size=250),
        "stock": json_values | st.integers(-5, 20_000_000),
        "per_user_limit": json_values | st.integers(-5, 2_000),
        "voucher_ttl_seconds": json_values | st.integers(-5, 40_000_000),
        "starts_at": json_values | st.datetimes().map(lambda d: d.isoformat() + "Z"),
        "ends_at": json_values | st.datetimes().map(lambda d: d.isoformat() + "+14:00"),
        "extra": json_values,
    },
)
bodies = st.one_of(
    st.none(),
    st.just(b""),
    st.just(b"{}"),
    json_values.map(lambda v: json.dumps(v).encode()),
    deal_bodies.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)


@st.composite
def requests(draw: st.DrawFn, deal: str, token: str, expired: str, api_key: str) -> dict[str, Any]:
    """One request: (method, path, headers, body) for ``TestClient.request``."""
    method, route = draw(st.sampled_from(ENDPOINTS))
    if draw(st.integers(0, 4)) == 0:  # now and then another method, or a route that does not exist
        method = draw(st.sampled_from(METHODS))
        route = draw(st.just(route) | st.text(max_size=30).map(lambda t: "/" + quote(t)))
    deal_id = deal if draw(st.integers(0, 3)) else quote(draw(st.text(max_size=80)), safe="")
    path = route.replace("{deal}", deal_id or "x")
    headers: dict[str, Any] = {}
    auth = draw(st.sampled_from(["valid", "valid", "valid", "expired", "forged", "junk", "none"]))
    if auth != "none":
        value = {
            "valid": f"Bearer {token}",
            "expired": f"Bearer {expired}",
            "forged": f"Bearer {token[:-6]}AAAAAA",
        }.get(auth)
        headers["Authorization"] = value if value is not None else draw(header_bytes)
    merchant = draw(st.sampled_from(["valid", "valid", "junk", "none"]))
    if merchant != "none":
        headers["X-API-Key"] = api_key if merchant == "valid" else draw(header_bytes)
    key = draw(st.sampled_from(["printable", "printable", "printable", "junk", "none"]))
    if key != "none":
        headers["Idempotency-Key"] = draw(printable_key) if key == "printable" else draw(header_bytes)
    content_type = draw(st.sampled_from(["application/json", "text/plain", "junk", "none"]))
    if content_type == "junk":
        headers["Content-Type"] = draw(header_bytes)
    elif content_type != "none":
        headers["Content-Type"] = content_type
    return {"method": method, "url": path, "headers": headers, "content": draw(bodies)}


def assert_answer_follows_the_contract(answer: Any, request: dict[str, Any]) -> None:
    status = answer.status_code
    assert status != 500 and status < 600, (request, answer.text[:500])
    if status < 400:
        return
    assert answer.headers["content-type"].startswith(PROBLEM_JSON), (request, answer.headers)
    if request["method"] == "HEAD":
        return  # HEAD answers carry the headers of the problem, not its body
    problem = answer.json()
    assert problem["status"] == status, problem
    assert problem["title"] and problem["detail"], problem
    assert CODES.get(problem["code"]) == status, problem
    if problem["code"] in RETRY_AFTER_CODES:
        assert int(answer.headers["Retry-After"]) >= 1, problem


def test_no_request_gets_a_500_and_every_error_is_a_problem(api: Api) -> None:
    merchant_key = api.merchant_key("m1")
    deal = api.create_deal(merchant_key, stock=3, per_user_limit=1)["deal_id"]
    token = api.user_token("alice")
    expired = api.user_token("alice", ttl=60, now=time.time() - 3600)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(requests(deal, token, expired, merchant_key))
    def check(request: dict[str, Any]) -> None:
        answer = api.client.request(**request)
        assert_answer_follows_the_contract(answer, request)

    check()
