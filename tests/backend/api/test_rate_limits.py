"""Claim rate limits, per user and per client address, on both profiles (the counters live in the
claim gate's store: SQLite beside the gate, or the machine's Redis).

Over a limit a claim is 429 ``rate_limited`` with ``Retry-After``, the seconds left in the fixed
window, the same bytes from the fast path and the FastAPI route; a retry of a claim already
issued still gets its voucher (it counts, but is answered); other users and addresses go on
claiming while one address floods; ``X-Forwarded-For`` names the client only when the peer is a
trusted proxy. The limits' clock is pinned, so no test depends on when it runs in a minute.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from shopcardd_backend.api.addresses import ClientAddresses
from shopcardd_backend.app import create_app
from shopcardd_backend.identity import dev_identity_key, mint_user_token, register_merchant
from shopcardd_backend.settings import Settings, SettingsError, parse_networks

from .conftest import Api, assert_problem, build_settings
from .test_claim_fast_path import both_ways, same_answer

AT = 1_800_000_037
"""The pinned clock of the limits: 37 s into its minute, so a 60 s window has 23 s left."""
PEER = ("127.0.0.1", 50000)
"""The TestClient's address: loopback, a trusted proxy by default (X-Forwarded-For is read)."""
OFF = {"claim_rate_per_user": 0, "claim_rate_per_address": 0}


def pin(api: Api, at: int) -> None:
    api.client.app.state.runtime.rate_limits.clock = lambda: at  # type: ignore[attr-defined]


@contextmanager
def limited(settings: Settings, **changes: Any) -> Iterator[Api]:
    """The app with these settings changed, its limits' clock at ``AT``."""
    settings = settings.model_copy(update=changes)
    with TestClient(create_app(settings), raise_server_exceptions=False, client=PEER) as client:
        api = Api(client, settings)
        pin(api, AT)
        yield api


def new_deal(api: Api, stock: int = 50) -> str:
    return str(api.create_deal(api.merchant_key("m1"), stock=stock, per_user_limit=stock)["deal_id"])


def stock_left(api: Api, deal: str) -> int:
    return int(api.client.get(f"/v1/deals/{deal}").json()["stock_left"])


def test_a_user_over_the_limit_gets_429_until_the_window_ends(settings: Settings) -> None:
    with limited(settings, claim_rate_per_user=3, claim_rate_per_address=0) as api:
        deal = new_deal(api)
        alice, bob = api.user_token("alice"), api.user_token("bob")
        assert [api.claim(deal, alice, f"a{n}").status_code for n in range(3)] == [201] * 3
        fast, routed = both_ways(api, deal, alice, "a3")
        problem = assert_problem(fast, 429, "rate_limited")
        same_answer(fast, routed)
        assert fast.headers["retry-after"] == "23" and "user" in problem["detail"]
        assert api.claim(deal, bob, "b0").status_code == 201, "another user claims on"
        pin(api, AT + 22)
        assert api.claim(deal, alice, "a4").headers["retry-after"] == "1"
        pin(api, AT + 23)  # the next window
        assert api.claim(deal, alice, "a5").status_code == 201
        assert stock_left(api, deal) == 50 - 5, "a refused claim takes no stock"
        assert 'shopcardd_claims_total{outcome="rate_limited"} 3.0' in api.client.get("/metrics").text


def test_the_window_is_a_setting(settings: Settings) -> None:
    with limited(settings, claim_rate_per_user=1, claim_rate_window_seconds=3600) as api:
        deal = new_deal(api)
        alice = api.user_token("alice")
        assert api.claim(deal, alice, "a0").status_code == 201
        refused = api.claim(deal, alice, "a1")
        assert_problem(refused, 429, "rate_limited")
        assert refused.headers["retry-after"] == str(3600 - AT % 3600)


@pytest.mark.parametrize("over", ["user", "address"])
def test_a_retry_of_an_issued_claim_counts_and_still_gets_its_voucher(settings: Settings, over: str) -> None:
    with limited(settings, **{**OFF, f"claim_rate_per_{over}": 2}) as api:
        deal = new_deal(api)
        alice = api.user_token("alice")
        other = alice if over == "user" else api.user_token("bob")  # bob: the same address
        first = api.claim(deal, alice, "k1")
        assert first.status_code == 201
        assert api.claim(deal, alice, "k1").status_code == 200  # the retry is the second request
        assert_problem(api.claim(deal, other, "k2"), 429, "rate_limited")  # so the third is over
        fast, routed = both_ways(api, deal, alice, "k1")
        assert fast.status_code == 200 and fast.json() == first.json()
        same_answer(fast, routed)
        assert_problem(api.claim(deal, alice, "k3"), 429, "rate_limited")
        assert stock_left(api, deal) == 50 - 1


def test_a_flooding_address_is_refused_while_other_addresses_claim_on(settings: Settings) -> None:
    """60 claims from one address and 20 from 20 others, all at once; the flood's first 5 pass.
    Then a forged token from the flooding address is 429, not 401: its signature is not even
    checked (the same token from elsewhere is)."""
    settings = settings.model_copy(update={"claim_rate_per_address": 5, "claim_rate_per_user": 0})
    identity = dev_identity_key(settings)
    flooder, app = "198.51.100.66", create_app(settings)

    def client(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 4000))
        return httpx.AsyncClient(transport=transport, base_url="http://api")

    async def claim(address: str, deal: str, user: str, token: str | None = None) -> httpx.Response:
        token = token or mint_user_token(identity, settings.user_issuer, user, 3600)
        async with client(address) as c:
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"k-{user}"}
            return await c.post(f"/v1/deals/{deal}/claims", headers=headers)

    async def sale() -> tuple[list[httpx.Response], list[httpx.Response], list[httpx.Response], int]:
        async with app.router.lifespan_context(app):
            app.state.runtime.rate_limits.clock = lambda: AT
            body = {"title": "flash", "stock": 100, "per_user_limit": 1, "voucher_ttl_seconds": 3600}
            key = register_merchant(app.state.runtime.store, "m1")
            async with client("192.0.2.1") as merchant:
                made = await merchant.post("/v1/deals", json=body, headers={"X-API-Key": key})
            deal = made.json()["deal_id"]
            answers = await asyncio.gather(
                *(claim(flooder, deal, f"bot{n}") for n in range(60)),
                *(claim(f"203.0.113.{n}", deal, f"user{n}") for n in range(20)),
            )
            forged = mint_user_token(identity, settings.user_issuer, "mallory", 3600)[:-6] + "AAAAAA"
            probes = [await claim(address, deal, "x", forged) for address in (flooder, "203.0.113.99")]
            async with client("192.0.2.1") as merchant:
                left = (await merchant.get(f"/v1/deals/{deal}")).json()["stock_left"]
            return answers[:60], answers[60:], probes, left

    flood, others, (forged_flood, forged_elsewhere), left = asyncio.run(sale())
    assert Counter(answer.status_code for answer in flood) == {201: 5, 429: 55}
    for answer in flood:
        if answer.status_code == 429:
            assert_problem(answer, 429, "rate_limited")
            assert 1 <= int(answer.headers["retry-after"]) <= 60
    assert [answer.status_code for answer in others] == [201] * 20
    assert left == 100 - 25
    assert_problem(forged_flood, 429, "rate_limited")
    assert_problem(forged_elsewhere, 401, "unauthorized")


def test_a_flood_of_forged_tokens_goes_over_the_limit_and_is_then_refused_unchecked(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forged token counts against its address like any claim request: 401 while under the
    limit, 429 over it; once the process knows the address is over, no signature is checked."""
    with limited(settings, **{**OFF, "claim_rate_per_address": 3}) as api:
        deal = new_deal(api)
        forged = api.user_token("mallory")[:-6] + "AAAAAA"
        users = api.client.app.state.runtime.claims.users  # type: ignore[attr-defined]
        checked: list[str] = []
        verify = users.user
        monkeypatch.setattr(users, "user", lambda token: checked.append(token) or verify(token))
        statuses = [api.claim(deal, forged, f"k{n}").status_code for n in range(8)]
        assert statuses == [401, 401, 401, 429, 429, 429, 429, 429]
        assert len(checked) == 4, "the request that went over was checked; none after it"
        assert api.claim(deal, api.user_token("alice"), "a").status_code == 429, "the address is over"


def test_x_forwarded_for_is_ignored_from_an_untrusted_peer(settings: Settings) -> None:
    with limited(settings, **{**OFF, "claim_rate_per_address": 2}, trusted_proxies="10.0.0.0/8") as api:
        deal = new_deal(api)
        claims = [(api.user_token(f"u{n}"), {"X-Forwarded-For": f"192.0.2.{n}"}) for n in range(3)]
        statuses = [api.claim(deal, token, "k", headers=headers).status_code for token, headers in claims]
        assert statuses == [201, 201, 429], "all three came from 127.0.0.1, whatever they said"


def test_x_forwarded_for_names_the_client_behind_a_trusted_proxy(settings: Settings) -> None:
    with limited(settings, **{**OFF, "claim_rate_per_address": 2}) as api:
        deal = new_deal(api)
        users = iter(range(100))

        def from_(forwarded: str) -> int:
            token = api.user_token(f"u{next(users)}")
            return api.claim(deal, token, "k", headers={"X-Forwarded-For": forwarded}).status_code

        assert [from_(f"192.0.2.{n}") for n in range(5)] == [201] * 5, "five addresses, one each"
        assert [from_("198.51.100.2") for _ in range(3)] == [201, 201, 429]
        # What the client wrote itself sits left of what nginx appended, and is never read:
        assert from_("192.0.2.200, 198.51.100.2") == 429
        assert from_("198.51.100.2, 127.0.0.1") == 429, "a second trusted proxy is skipped"
        assert from_("192.0.2.200") == 201


def test_limits_of_zero_are_off(settings: Settings) -> None:
    with limited(settings, **OFF) as api:
        deal = new_deal(api, stock=100)
        alice = api.user_token("alice")
        assert [api.claim(deal, alice, f"a{n}").status_code for n in range(40)] == [201] * 40


def scope(host: str, forwarded: str | None = None) -> dict[str, Any]:
    headers = [] if forwarded is None else [(b"x-forwarded-for", forwarded.encode())]
    return {"type": "http", "client": (host, 1), "headers": headers}


def test_client_addresses_ipv6_by_its_64_and_an_unreadable_hop_ends_the_trust() -> None:
    addresses = ClientAddresses(parse_networks("127.0.0.1, 10.0.0.0/8"))
    assert addresses(scope("2001:db8:1:2::1")) == "2001:db8:1:2::/64"
    assert addresses(scope("2001:db8:1:2:ffff::9")) == "2001:db8:1:2::/64", "one /64, one client"
    assert addresses(scope("2001:db8:1:3::1")) == "2001:db8:1:3::/64"
    assert addresses(scope("::ffff:192.0.2.7")) == "192.0.2.7"
    assert addresses(scope("127.0.0.1", "2001:db8:1:2::5")) == "2001:db8:1:2::/64"
    assert addresses(scope("127.0.0.1", "junk, 192.0.2.1, 10.1.2.3")) == "192.0.2.1"
    assert addresses(scope("127.0.0.1", "192.0.2.1, junk")) == "127.0.0.1"
    assert addresses(scope("127.0.0.1", "10.9.9.9, 10.1.1.1")) == "10.9.9.9", "all proxies: the first"
    assert addresses(scope("127.0.0.1")) == "127.0.0.1"
    assert addresses(scope("192.0.2.9", "203.0.113.1")) == "192.0.2.9", "an untrusted peer is the client"
    assert ClientAddresses(())(scope("127.0.0.1", "192.0.2.1")) == "127.0.0.1"


def test_the_default_limits_and_trusted_proxies(environ: pytest.MonkeyPatch) -> None:
    defaults = Settings.from_env()
    assert (defaults.claim_rate_per_user, defaults.claim_rate_per_address) == (30, 3000)
    assert defaults.claim_rate_window_seconds == 60
    assert [str(n) for n in defaults.trusted_proxy_networks] == ["127.0.0.1/32", "::1/128"]
    environ.setenv("SHOPCARDD_TRUSTED_PROXIES", "")
    assert Settings.from_env().trusted_proxy_networks == ()


NEGATIVE = "must be 0 (no limit) or a number of claims per window"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("SHOPCARDD_CLAIM_RATE_PER_USER", "-1", NEGATIVE),
        ("SHOPCARDD_CLAIM_RATE_PER_ADDRESS", "-3000", NEGATIVE),
        ("SHOPCARDD_CLAIM_RATE_PER_USER", "many", "valid integer"),
        ("SHOPCARDD_CLAIM_RATE_WINDOW_SECONDS", "0", "greater than or equal to 1"),
        ("SHOPCARDD_TRUSTED_PROXIES", "10.0.0.0/8, nginx.local", "'nginx.local' is not an IP address"),
    ],
)
def test_a_bad_rate_limit_setting_is_refused_naming_it(
    environ: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    environ.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        Settings.from_env()
    assert str(refused.value).startswith(f"{name}: ") and says in str(refused.value)


def test_the_claim_documents_429_with_retry_after(tmp_path: Path) -> None:
    schema = create_app(build_settings(tmp_path)).openapi()
    responses = schema["paths"]["/v1/deals/{deal_id}/claims"]["post"]["responses"]
    assert "rate_limited" in responses["429"]["description"]
    assert responses["429"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}


def test_a_blocking_claim_counts_against_the_rate_limits_too(tmp_path: Path) -> None:
    """``ClaimService.claim_as`` (a bench's or a script's claims) takes the API's path: over the
    per-user limit it is refused ``rate_limited`` with the window's rest, yet a retry of a claim
    already issued still gets its voucher."""
    from shopcardd_backend.claims import ClaimOutcome
    from shopcardd_backend.runtime import Runtime

    settings = build_settings(tmp_path, claim_rate_per_user=2, claim_rate_per_address=0)
    with Runtime(settings) as runtime:
        deal = runtime.deals.create(
            "m1",
            title="tea",
            stock=10,
            per_user_limit=5,
            voucher_ttl_seconds=600,
            starts_at=None,
            ends_at=None,
        ).deal
        claims = runtime.claims
        first = claims.claim_as(deal.deal_id, "alice", "k1")
        assert first.outcome is ClaimOutcome.ISSUED and first.voucher is not None
        assert claims.claim_as(deal.deal_id, "alice", "k2").outcome is ClaimOutcome.ISSUED
        over = claims.claim_as(deal.deal_id, "alice", "k3")
        assert over.outcome is ClaimOutcome.RATE_LIMITED and over.voucher is None
        assert over.over is not None and over.over.which == "user" and over.over.retry_after >= 1
        replay = claims.claim_as(deal.deal_id, "alice", "k1")
        assert replay.outcome is ClaimOutcome.REPLAYED and replay.voucher is not None
        assert replay.voucher.voucher_id == first.voucher.voucher_id
        assert claims.claim_as(deal.deal_id, "bob", "k1").outcome is ClaimOutcome.ISSUED
        assert runtime.gate.stock_left(deal.deal_id) == 7
