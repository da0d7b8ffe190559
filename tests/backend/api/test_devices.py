"""Device enrolment and sync over HTTP, on both profiles: the wire contract of docs/backend-api.md.

Every test runs through FastAPI's TestClient against real stores (SQLite; MongoDB on the
scaled profile), and signs its device tokens with ``shopcardd_voucher.device_auth``, as a
counter does.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from fastapi.testclient import TestClient
from jwt.utils import base64url_encode

from shopcardd_backend.app import create_app
from shopcardd_backend.deals import DealService
from shopcardd_backend.devices import DeviceService, VoucherNotFound
from shopcardd_backend.events import parse_event
from shopcardd_backend.gates.base import ClaimAttempt, ClaimGate, Outcome
from shopcardd_backend.settings import Settings, SettingsError
from shopcardd_backend.stores.base import DocumentStore, VoucherRecord
from shopcardd_backend.workers.persist import PersistHandler
from shopcardd_provision.keys import keygen
from shopcardd_voucher import KeySet, Reason, SigningKey, new_voucher_id, verify
from shopcardd_voucher.device_auth import make_device_token, public_jwk

from .conftest import AUDIENCE, Api, Counter, assert_problem, enrol, redemption

BACKEND_TIME = re.compile(r"\(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)")


def stored(api: Api, merchant: str = "m1") -> int:
    return api.client.app.state.runtime.store.count_redemptions(merchant)  # type: ignore[attr-defined]


def test_enrolment_takes_a_public_ed25519_jwk_and_an_unused_id(api: Api) -> None:
    key = api.merchant_key("m1")
    device_key = SigningKey.generate("c1")
    headers = {"X-API-Key": key}
    made = api.client.post(
        "/v1/devices", json={"device_id": "c1", "public_key": public_jwk(device_key)}, headers=headers
    )
    assert made.status_code == 201, made.text
    assert made.json() | {"enrolled_at": None} == {
        "device_id": "c1",
        "merchant_id": "m1",
        "public_key": public_jwk(device_key),
        "status": "active",
        "enrolled_at": None,
        "revoked_at": None,
    }
    again = api.client.post(
        "/v1/devices", json={"device_id": "c1", "public_key": public_jwk(device_key)}, headers=headers
    )
    assert "enrolled already" in assert_problem(again, 409, "conflict")["detail"]

    private = device_key.private_key.private_bytes_raw()
    refused = {
        "private member": {**public_jwk(device_key), "d": base64url_encode(private).decode()},
        "rsa": {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
        "x25519": {**public_jwk(device_key), "crv": "X25519"},
        "short x": {**public_jwk(device_key), "x": "AAAA"},
        "alg": {**public_jwk(device_key), "alg": "RS256"},
    }
    for what, jwk in refused.items():
        answer = api.client.post("/v1/devices", json={"device_id": "c2", "public_key": jwk}, headers=headers)
        assert "public_key" in assert_problem(answer, 422, "invalid_request")["detail"], what
    for device_id in ("", "a b", "x" * 65, "ü"):
        answer = api.client.post(
            "/v1/devices",
            json={"device_id": device_id, "public_key": public_jwk(device_key)},
            headers=headers,
        )
        assert_problem(answer, 422, "invalid_request")
    body = {"device_id": "c2", "public_key": public_jwk(device_key), "merchant_id": "m2"}
    assert (
        "not 'm2'"
        in assert_problem(api.client.post("/v1/devices", json=body, headers=headers), 403, "forbidden")[
            "detail"
        ]
    )
    body = {"device_id": "c2", "public_key": public_jwk(device_key)}
    assert_problem(api.client.post("/v1/devices", json=body), 401, "unauthorized")
    assert_problem(
        api.client.post("/v1/devices", json=body, headers={"X-API-Key": "sck_nope"}), 401, "unauthorized"
    )


def test_a_bad_sync_token_is_401_and_changes_nothing(api: Api) -> None:
    key = api.merchant_key("m1")
    counter = enrol(api, key, "c1")
    other = enrol(api, key, "c2")
    batch = [redemption("v1")]
    now = time.time()
    replayed = counter.token()
    assert counter.sync([], token=replayed).status_code == 200

    stranger = SigningKey.generate("c1")  # the right kid, another key
    tokens = {
        "forged": make_device_token(stranger, AUDIENCE),
        "another device's key": make_device_token(SigningKey("c1", other.key.private_key), AUDIENCE),
        "expired": counter.token(now=now - 1000),
        "replayed": replayed,
        "wrong audience": make_device_token(counter.key, "https://elsewhere.example"),
        "too long a life": jwt.encode(
            {"sub": "c1", "aud": AUDIENCE, "iat": int(now), "exp": int(now) + 3600, "jti": "j" * 22},
            counter.key.private_key,
            algorithm="EdDSA",
            headers={"kid": "c1"},
        ),
        "alg none": jwt.encode(
            {"sub": "c1", "aud": AUDIENCE, "iat": int(now), "exp": int(now) + 60, "jti": "n" * 22},
            None,
            algorithm="none",
            headers={"kid": "c1"},
        ),
        "unknown device": make_device_token(SigningKey.generate("c9"), AUDIENCE),
        "not a jwt": "hello",
    }
    for what, token in tokens.items():
        answer = counter.sync(batch, token=token)
        problem = assert_problem(answer, 401, "unauthorized")
        assert answer.headers["www-authenticate"] == "Bearer", what
        assert problem["detail"], what
    assert_problem(api.client.post("/v1/devices/sync", json={"redemptions": []}), 401, "unauthorized")
    assert stored(api) == 0

    revoked = api.client.post("/v1/devices/c1/revoke", headers={"X-API-Key": key})
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert revoked.json()["revoked_at"] is not None
    problem = assert_problem(counter.sync(batch), 401, "unauthorized")
    assert "revoked" in problem["detail"]
    assert stored(api) == 0
    assert other.sync(batch).json()["results"] == [
        {"voucher_id": "v1", "status": "ok", "first_device_id": None, "first_redeemed_at": None}
    ]


def test_only_the_merchant_revokes_its_devices(api: Api) -> None:
    enrol(api, api.merchant_key("m1"), "c1")
    other_key = api.merchant_key("m2")
    assert_problem(
        api.client.post("/v1/devices/c1/revoke", headers={"X-API-Key": other_key}), 403, "forbidden"
    )
    assert_problem(
        api.client.post("/v1/devices/c9/revoke", headers={"X-API-Key": other_key}), 404, "not_found"
    )


def test_the_same_batch_twice_changes_nothing(api: Api) -> None:
    counter = enrol(api, api.merchant_key("m1"), "c1")
    batch = [redemption(f"v{i}", at=i) for i in range(50)]
    first = counter.sync(batch).json()
    second = counter.sync(batch).json()
    assert first["results"] == second["results"]
    assert {r["status"] for r in first["results"]} == {"ok"}
    assert [r["voucher_id"] for r in first["results"]] == [f"v{i}" for i in range(50)]
    assert stored(api) == 50
    assert (
        counter.api.client.get("/v1/merchants/m1/conflicts", headers=counter.headers).json()["conflicts"]
        == []
    )


def test_a_voucher_redeemed_at_two_devices_is_a_conflict_naming_the_first(api: Api) -> None:
    key = api.merchant_key("m1")
    first, second = enrol(api, key, "till-1"), enrol(api, key, "till-2")
    assert first.sync([redemption("v1", at=0), redemption("v2", at=5)]).status_code == 200
    answer = second.sync([redemption("v1", at=30), redemption("v3", at=31)]).json()
    assert answer["results"] == [
        {
            "voucher_id": "v1",
            "status": "conflict",
            "first_device_id": "till-1",
            "first_redeemed_at": "2026-12-01T10:00:00Z",
        },
        {"voucher_id": "v3", "status": "ok", "first_device_id": None, "first_redeemed_at": None},
    ]
    again = first.sync([redemption("v1", at=0)]).json()["results"]
    assert again[0]["status"] == "ok", "the first device's re-upload stays ok"

    conflicts = api.client.get("/v1/merchants/m1/conflicts", headers={"X-API-Key": key})
    assert conflicts.status_code == 200
    (conflict,) = conflicts.json()["conflicts"]
    assert conflict["voucher_id"] == "v1" and conflict["deal_id"] == "d1"
    assert [(r["device_id"], r["redeemed_at"]) for r in conflict["redemptions"]] == [
        ("till-1", "2026-12-01T10:00:00Z"),
        ("till-2", "2026-12-01T10:00:30Z"),
    ]
    assert all(r["received_at"] for r in conflict["redemptions"])
    assert conflicts.json()["next_cursor"] is None
    other = api.merchant_key("m2")
    assert_problem(
        api.client.get("/v1/merchants/m1/conflicts", headers={"X-API-Key": other}), 403, "forbidden"
    )
    assert (
        api.client.get("/v1/merchants/m2/conflicts", headers={"X-API-Key": other}).json()["conflicts"] == []
    )


def test_revocations_reach_the_next_sync_once(api: Api) -> None:
    key = api.merchant_key("m1")
    counter = enrol(api, key, "c1")
    deal = api.create_deal(key)["deal_id"]
    other_deal = api.create_deal(key)["deal_id"]
    start = counter.sync([]).json()["revocations"]
    assert start == {"vouchers": [], "deals": [], "watermark": None, "more": False}

    voucher = api.claim(deal, api.user_token("alice"), "k1").json()["voucher_id"]
    revoked = api.client.post(
        f"/v1/vouchers/{voucher}/revoke", json={"deal_id": deal}, headers=counter.headers
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json() | {"revoked_at": None} == {
        "voucher_id": voucher,
        "deal_id": deal,
        "merchant_id": "m1",
        "status": "revoked",
        "revoked_at": None,
    }
    assert api.client.post(f"/v1/deals/{other_deal}/cancel", headers=counter.headers).status_code == 200
    again = api.client.post(f"/v1/vouchers/{voucher}/revoke", json={"deal_id": deal}, headers=counter.headers)
    assert again.json() == revoked.json(), "revoking twice is harmless"

    down = counter.sync([], watermark=start["watermark"]).json()["revocations"]
    assert down == {"vouchers": [voucher], "deals": [other_deal], "watermark": "2", "more": False}
    after = counter.sync([], watermark=down["watermark"]).json()["revocations"]
    assert after == {"vouchers": [], "deals": [], "watermark": "2", "more": False}
    assert counter.sync([], watermark=None).json()["revocations"]["vouchers"] == [voucher], "null starts over"
    for bogus in ("7", "abc", "-1"):
        assert_problem(counter.sync([], watermark=bogus), 422, "invalid_request")


def test_a_voucher_is_revoked_by_its_own_merchant_only(api: Api) -> None:
    key, other = api.merchant_key("m1"), api.merchant_key("m2")
    deal = api.create_deal(key)["deal_id"]
    store = api.client.app.state.runtime.store  # type: ignore[attr-defined]
    now = datetime.now(UTC)
    store.save_voucher(VoucherRecord("vK", deal, "m1", "u1", "k1", now, now + timedelta(hours=1)))

    known = api.client.post("/v1/vouchers/vK/revoke", headers={"X-API-Key": key})
    assert known.status_code == 200 and known.json()["deal_id"] == deal, "a stored voucher needs no body"
    unknown = api.client.post("/v1/vouchers/vU/revoke", headers={"X-API-Key": key})
    assert "name its deal" in assert_problem(unknown, 404, "not_found")["detail"]
    assert_problem(api.client.post("/v1/vouchers/vK/revoke", headers={"X-API-Key": other}), 403, "forbidden")
    foreign = api.client.post("/v1/vouchers/vU/revoke", json={"deal_id": deal}, headers={"X-API-Key": other})
    assert_problem(foreign, 403, "forbidden")
    wrong = api.client.post("/v1/vouchers/vK/revoke", json={"deal_id": "other"}, headers={"X-API-Key": key})
    assert_problem(wrong, 403, "forbidden")
    nowhere = api.client.post(
        "/v1/vouchers/vU/revoke", json={"deal_id": "nodeal"}, headers={"X-API-Key": key}
    )
    assert_problem(nowhere, 404, "not_found")


def test_sync_sends_the_key_set_peers_and_time(api: Api) -> None:
    key = api.merchant_key("m1")
    counter, peer, gone = enrol(api, key, "c1"), enrol(api, key, "c2"), enrol(api, key, "c3")
    enrol(api, api.merchant_key("m2"), "x1")
    api.client.post("/v1/devices/c3/revoke", headers={"X-API-Key": key})
    before = datetime.now(UTC).replace(microsecond=0)
    answer = counter.sync([]).json()
    assert answer["peers"] == [{"device_id": "c2", "public_key": public_jwk(peer.key)}]
    assert gone.device_id not in {found["device_id"] for found in answer["peers"]}  # revoked: no peer
    assert answer["keys"]["keys"] == api.client.get("/.well-known/jwks.json").json()["keys"]
    issued = datetime.fromisoformat(answer["keys"]["issued_at"])
    assert datetime.fromisoformat(answer["keys"]["valid_until"]) - issued == timedelta(days=7)
    server_time = datetime.fromisoformat(answer["server_time"])
    assert before <= server_time <= datetime.now(UTC) + timedelta(seconds=1)


def test_a_batch_is_at_most_500_redemptions_of_distinct_vouchers(api: Api) -> None:
    counter = enrol(api, api.merchant_key("m1"), "c1")
    assert_problem(counter.sync([redemption(f"v{i}") for i in range(501)]), 422, "invalid_request")
    assert_problem(counter.sync([redemption("v1"), redemption("v1")]), 422, "invalid_request")
    bad = [{"voucher_id": "v1", "deal_id": "d1", "redeemed_at": 1764583200}]
    assert_problem(counter.sync(bad), 422, "invalid_request")
    assert_problem(counter.sync([{**redemption("v1"), "shop": "x"}]), 422, "invalid_request")
    assert stored(api) == 0
    big = [
        {
            **redemption(f"{i:0>64}"),
            "deal_id": "d" * 64,
            "user_id": "u" * 64,
            "expires_at": "2026-12-02T10:00:00Z",
        }
        for i in range(500)
    ]
    answer = counter.sync(big)
    assert answer.status_code == 200, answer.text[:300]
    assert stored(api) == 500


def test_ten_thousand_redemptions_in_batches_are_stored_exactly_once(api: Api) -> None:
    key = api.merchant_key("m1")
    first, second = enrol(api, key, "c1"), enrol(api, key, "c2")
    batches = [[redemption(f"v{b:02d}-{i:03d}", at=i) for i in range(500)] for b in range(20)]
    for batch in batches:
        assert {r["status"] for r in first.sync(batch).json()["results"]} == {"ok"}
    assert stored(api) == 10_000
    again = first.sync(batches[7]).json()["results"]  # a batch whose answer was lost, sent again
    assert {r["status"] for r in again} == {"ok"} and len(again) == 500
    clash = second.sync(batches[3][:10]).json()["results"]
    assert {(r["status"], r["first_device_id"]) for r in clash} == {("conflict", "c1")}
    assert stored(api) == 10_010
    conflicts = api.client.get("/v1/merchants/m1/conflicts?limit=4", headers={"X-API-Key": key}).json()
    assert [c["voucher_id"] for c in conflicts["conflicts"]] == [f"v03-{i:03d}" for i in range(4)]
    assert conflicts["next_cursor"] == "v03-003"
    rest = api.client.get(
        f"/v1/merchants/m1/conflicts?cursor={conflicts['next_cursor']}", headers={"X-API-Key": key}
    ).json()
    assert len(rest["conflicts"]) == 6 and rest["next_cursor"] is None


def test_a_sync_body_may_be_larger_than_other_bodies_but_is_bounded(api: Api) -> None:
    counter = enrol(api, api.merchant_key("m1"), "c1")
    huge = b'{"redemptions": [' + b" " * (300 * 1024) + b"]}"
    answer = api.client.post(
        "/v1/devices/sync", content=huge, headers={**counter.bearer(), "Content-Type": "application/json"}
    )
    assert_problem(answer, 413, "payload_too_large")
    deal = api.client.post("/v1/deals", content=b" " * (20 * 1024), headers=counter.headers)
    assert_problem(deal, 413, "payload_too_large")


def test_a_key_rotation_publishes_the_new_key_at_once_and_keeps_the_old(api: Api) -> None:
    """The operator's rotation (docs/backend-api.md, Keys): keygen into the key folder, then
    SHOPCARDD_SIGNING_KID and a restart. Both keys reach the counters before and after."""
    key = api.merchant_key("m1")
    counter = enrol(api, key, "c1")
    deal = api.create_deal(key, stock=10)["deal_id"]
    old = api.claim(deal, api.user_token("alice"), "a-1").json()["token"]
    old_kid = jwt.get_unverified_header(old)["kid"]

    keygen("EdDSA", "k2", api.settings.keys_dir)
    published = counter.sync([]).json()["keys"]["keys"]
    assert [k["kid"] for k in published] == [old_kid, "k2"], "published before any process signs with it"
    assert [k["kid"] for k in api.client.get("/.well-known/jwks.json").json()["keys"]] == [old_kid, "k2"]
    still = api.claim(deal, api.user_token("bob"), "b-1").json()["token"]
    assert jwt.get_unverified_header(still)["kid"] == old_kid, "no process signs with it before the restart"

    rotated = api.settings.model_copy(update={"signing_kid": "k2"})
    with TestClient(create_app(rotated), raise_server_exceptions=False) as client:
        restarted = Api(client, rotated)
        new = restarted.claim(deal, restarted.user_token("carol"), "c-1").json()["token"]
        assert jwt.get_unverified_header(new)["kid"] == "k2"
        after = Counter(restarted, "c1", counter.key, key).sync([]).json()["keys"]
    keys = KeySet.from_jwks({"keys": after["keys"]})
    assert keys.kids == [old_kid, "k2"]
    for token in (old, still, new):
        assert verify(token, keys, merchant="m1").reason is Reason.ACCEPTED


def test_production_refuses_to_start_without_a_device_audience(environ: pytest.MonkeyPatch) -> None:
    """Unset, a device token's audience would be whatever ``Host`` the client sent."""
    environ.setenv("SHOPCARDD_ENVIRONMENT", "production")
    environ.setenv("SHOPCARDD_USER_SECRET", "s" * 40)
    environ.setenv("SHOPCARDD_USER_AUDIENCE", "shopcardd-api")
    with pytest.raises(SettingsError) as refused:
        Settings.from_env()
    assert str(refused.value).startswith("production needs SHOPCARDD_DEVICE_AUDIENCE")
    assert "\n" not in str(refused.value)
    environ.setenv("SHOPCARDD_DEVICE_AUDIENCE", "https://api.shopcardd.example")
    assert Settings.from_env().device_audience == "https://api.shopcardd.example"


def test_the_401_does_not_tell_an_enrolled_device_id_from_an_unknown_one(api: Api) -> None:
    counter = enrol(api, api.merchant_key("m1"), "till-1")
    problems = [
        assert_problem(
            counter.sync([], token=make_device_token(SigningKey.generate(device_id), AUDIENCE)),
            401,
            "unauthorized",
        )
        for device_id in ("till-1", "till-9")  # enrolled (a forged token), never enrolled
    ]
    assert problems[0] == problems[1]
    assert "not an enrolled device" not in problems[0]["detail"]


def test_the_sync_token_is_checked_before_the_body_is_parsed(api: Api) -> None:
    """A stranger's 256 KiB body is answered 401, never parsed (not even the 422 of bad JSON)."""
    counter = enrol(api, api.merchant_key("m1"), "c1")
    junk = b'{"redemptions": [' + b"[" * (255 * 1024) + b"]}"
    json_type = {"Content-Type": "application/json"}
    forged = make_device_token(SigningKey.generate("c1"), AUDIENCE)
    for headers in ({}, {"Authorization": f"Bearer {forged}"}):
        answer = api.client.post("/v1/devices/sync", content=junk, headers={**json_type, **headers})
        assert_problem(answer, 401, "unauthorized")
    known = api.client.post("/v1/devices/sync", content=junk, headers={**json_type, **counter.bearer()})
    assert_problem(known, 422, "invalid_request")
    wrong_type = api.client.post("/v1/devices/sync", content=b"{}", headers=counter.bearer())
    assert "Content-Type: application/json" in assert_problem(wrong_type, 422, "invalid_request")["detail"]
    empty = api.client.post("/v1/devices/sync", headers={**json_type, **counter.bearer()})
    assert "required" in assert_problem(empty, 422, "invalid_request")["detail"]
    schema = api.client.get("/openapi.json").json()["paths"]["/v1/devices/sync"]["post"]["requestBody"]
    assert "redemptions" in schema["content"]["application/json"]["schema"]["properties"]


def test_one_public_key_is_enrolled_for_one_device_only(api: Api) -> None:
    key, other = api.merchant_key("m1"), api.merchant_key("m2")
    first = enrol(api, key, "till-1")
    api.client.post("/v1/devices/till-1/revoke", headers={"X-API-Key": key})
    for merchant_key in (key, other):  # revoked or not, this merchant's or another's
        body = {"device_id": "till-2", "public_key": public_jwk(first.key)}
        answer = api.client.post("/v1/devices", json=body, headers={"X-API-Key": merchant_key})
        assert "another device's" in assert_problem(answer, 409, "conflict")["detail"]
    assert api.client.post("/v1/devices/till-2/revoke", headers={"X-API-Key": key}).status_code == 404
    enrol(api, key, "till-2")  # with a key of its own


def test_an_implausible_redeemed_at_is_refused_alone_and_the_batch_stays_idempotent(api: Api) -> None:
    counter = enrol(api, api.merchant_key("m1"), "c1")
    now = datetime.now(UTC).replace(microsecond=0)

    def upload(voucher_id: str, redeemed_at: datetime, expires_in: timedelta) -> dict[str, str]:
        return {
            "voucher_id": voucher_id,
            "deal_id": "d1",
            "redeemed_at": redeemed_at.isoformat(),
            "expires_at": (redeemed_at + expires_in).isoformat(),
        }

    batch = [
        upload("good", now - timedelta(minutes=5), timedelta(hours=1)),
        {**upload("year-9999", now, timedelta(hours=1)), "redeemed_at": "9999-12-31T00:00:00Z"},
        upload("tomorrow", now + timedelta(days=1), timedelta(hours=1)),
        upload("after-expiry", now - timedelta(days=3), -timedelta(days=1)),
        upload("before-issue", now - timedelta(days=400), timedelta(days=380)),
        upload("late-but-in-leeway", now - timedelta(minutes=10), -timedelta(minutes=30)),
    ]
    first = counter.sync(batch)
    assert first.status_code == 200, first.text
    statuses = {r["voucher_id"]: (r["status"], "reason" in r) for r in first.json()["results"]}
    assert statuses == {
        "good": ("ok", False),
        "year-9999": ("refused", True),
        "tomorrow": ("refused", True),
        "after-expiry": ("refused", True),
        "before-issue": ("refused", True),
        "late-but-in-leeway": ("ok", False),
    }
    assert stored(api) == 2
    again = counter.sync(batch).json()["results"]
    assert without_clock(again) == without_clock(first.json()["results"]), "the same batch: the same answer"
    assert stored(api) == 2


def without_clock(results: list[dict[str, object]]) -> list[dict[str, object]]:
    """Sync results with the backend's time in a refusal's reason masked: it moves on between
    two syncs (a second boundary between them made the answers differ in that alone)."""
    masked = []
    for result in results:
        if "reason" in result:
            result = {**result, "reason": BACKEND_TIME.sub("(TIME)", str(result["reason"]))}
        masked.append(result)
    return masked


def test_revoking_a_voucher_this_backend_never_issued_is_404(api: Api) -> None:
    key = api.merchant_key("m1")
    deal = api.create_deal(key)["deal_id"]
    issued = api.claim(deal, api.user_token("alice"), "k1").json()["voucher_id"]
    typo = api.client.post(
        f"/v1/vouchers/{issued[:-1]}x/revoke", json={"deal_id": deal}, headers={"X-API-Key": key}
    )
    assert "was issued here" in assert_problem(typo, 404, "not_found")["detail"]
    real = api.client.post(
        f"/v1/vouchers/{issued}/revoke", json={"deal_id": deal}, headers={"X-API-Key": key}
    )
    assert real.status_code == 200, real.text
    counter = enrol(api, key, "c1")
    assert counter.sync([]).json()["revocations"]["vouchers"] == [issued]


def test_a_voucher_still_in_the_outbox_is_revoked_by_its_deal(
    make_gate: Callable[..., ClaimGate], make_store: Callable[..., DocumentStore]
) -> None:
    """Before the persist worker stores it, a voucher is known by the claim event in the gate's outbox."""
    gate, store = make_gate("sqlite"), make_store("sqlite")
    deal = DealService(gate, gate, store).create(
        "m1", title="t", stock=3, per_user_limit=1, voucher_ttl_seconds=60, starts_at=None, ends_at=None
    )
    voucher_id = new_voucher_id()
    attempt = ClaimAttempt(deal.deal.deal_id, "u1", "k1", voucher_id, int(time.time()))
    assert gate.claim(attempt).outcome is Outcome.ISSUED
    devices = DeviceService(store, lambda: {"keys": []}, 60, outbox=gate)
    assert store.get_voucher(voucher_id) is None
    assert devices.revoke_voucher("m1", voucher_id, deal.deal.deal_id).voucher_id == voucher_id
    with pytest.raises(VoucherNotFound):
        devices.revoke_voucher("m1", new_voucher_id(), deal.deal.deal_id)
    assert [r.target_id for r in store.revocations_after("m1", 0, 10)] == [voucher_id]


def test_a_voucher_stored_while_the_outbox_is_searched_is_revoked(
    make_gate: Callable[..., ClaimGate],
    make_store: Callable[..., DocumentStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The persist step moves the voucher from the outbox into the store between the
    revocation's look in the store and its look in the outbox: still found, not a 404."""
    gate, store = make_gate("sqlite"), make_store("sqlite")
    deals = DealService(gate, gate, store)
    deal = deals.create(
        "m1", title="t", stock=3, per_user_limit=1, voucher_ttl_seconds=60, starts_at=None, ends_at=None
    )
    deal_id, voucher_id = deal.deal.deal_id, new_voucher_id()
    assert (
        gate.claim(ClaimAttempt(deal_id, "u1", "k1", voucher_id, int(time.time()))).outcome is Outcome.ISSUED
    )
    looks = store.get_voucher

    def first_look_then_persisted(voucher: str) -> VoucherRecord | None:
        found = looks(voucher)
        monkeypatch.setattr(store, "get_voucher", looks)
        [event] = gate.read_outbox(deal_id=deal_id)
        PersistHandler(store).handle([parse_event(event.payload)])
        gate.ack_outbox([event.event_id])
        return found

    monkeypatch.setattr(store, "get_voucher", first_look_then_persisted)
    devices = DeviceService(store, lambda: {"keys": []}, 60, outbox=gate)
    assert devices.revoke_voucher("m1", voucher_id, deal_id).deal_id == deal_id
    assert [r.target_id for r in store.revocations_after("m1", 0, 10)] == [voucher_id]
