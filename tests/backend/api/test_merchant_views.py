"""What a merchant reads through the API (counters, a deal's vouchers, one voucher's story, deals
with their stock left and status) and the replacement of a lost API key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from waiting import until

from .conftest import Api, assert_problem, enrol, redemption


def _rfc3339(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def test_the_deal_list_shows_stock_left_and_a_computed_status(api: Api) -> None:
    key = api.merchant_key("m1")
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    sold = api.create_deal(key, title="sold", stock=1)["deal_id"]
    scheduled = api.create_deal(key, title="later", starts_at=_rfc3339(later))["deal_id"]
    cancelled = api.create_deal(key, title="off")["deal_id"]
    selling = api.create_deal(key, title="on", stock=3)["deal_id"]
    assert api.client.post(f"/v1/deals/{cancelled}/cancel", headers={"X-API-Key": key}).status_code == 200
    assert api.claim(sold, api.user_token("alice"), "k1").status_code == 201
    assert api.claim(selling, api.user_token("alice"), "k1").status_code == 201
    listed = api.client.get("/v1/deals", headers={"X-API-Key": key}).json()["deals"]
    seen = {d["deal_id"]: (d["stock_left"], d["status"]) for d in listed}
    assert seen == {
        sold: (0, "sold_out"),
        scheduled: (5, "scheduled"),
        cancelled: (5, "cancelled"),
        selling: (2, "active"),
    }
    assert api.client.get(f"/v1/deals/{sold}").json()["status"] == "sold_out"


def test_a_merchant_lists_its_counters_with_last_sync_and_redemptions(api: Api) -> None:
    key = api.merchant_key("m1")
    till, door = enrol(api, key, "till"), enrol(api, key, "door")
    enrol(api, api.merchant_key("m2"), "elsewhere")
    assert till.sync([redemption("v1"), redemption("v2")]).status_code == 200
    assert api.client.post("/v1/devices/door/revoke", headers=door.headers).status_code == 200
    answer = api.client.get("/v1/devices", headers={"X-API-Key": key})
    assert answer.status_code == 200, answer.text
    devices = {d["device_id"]: d for d in answer.json()["devices"]}
    assert list(devices) == ["door", "till"]
    assert devices["till"]["last_sync_at"] is not None and devices["till"]["keys_fresh"] is True
    assert (devices["till"]["redemptions"], devices["till"]["status"]) == (2, "active")
    assert devices["door"]["last_sync_at"] is None and devices["door"]["keys_fresh"] is False
    assert devices["door"]["status"] == "revoked" and devices["door"]["revoked_at"] is not None
    assert_problem(api.client.get("/v1/devices"), 401, "unauthorized")


def _claimed(api: Api, key: str, deal: str, users: list[str]) -> list[str]:
    ids = [api.claim(deal, api.user_token(user), f"k-{user}").json()["voucher_id"] for user in users]

    def all_stored() -> bool:
        page = api.client.get(f"/v1/deals/{deal}/vouchers", headers={"X-API-Key": key}).json()
        return len(page["vouchers"]) == len(users)

    until(all_stored, "the persist handler stored the vouchers")
    return ids


def test_a_deals_vouchers_page_by_page_and_one_vouchers_story(api: Api) -> None:
    key = api.merchant_key("m1")
    deal = api.create_deal(key)["deal_id"]
    ids = _claimed(api, key, deal, ["ann", "bob", "cid"])
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get(f"/v1/deals/{deal}/vouchers", params=params, headers={"X-API-Key": key}).json()
        seen += page["vouchers"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(v["voucher_id"] for v in seen) == sorted(ids)
    assert {v["user_id"] for v in seen} == {"ann", "bob", "cid"}

    till = enrol(api, key, "till")
    assert till.sync([redemption(ids[0], deal)]).status_code == 200
    assert api.client.post(f"/v1/vouchers/{ids[1]}/revoke", headers={"X-API-Key": key}).status_code == 200
    redeemed = api.client.get(f"/v1/vouchers/{ids[0]}", headers={"X-API-Key": key}).json()
    assert (redeemed["deal_id"], redeemed["user_id"], redeemed["revoked_at"]) == (deal, "ann", None)
    assert [(r["device_id"], r["redeemed_at"]) for r in redeemed["redemptions"]] == [
        ("till", "2026-12-01T10:00:00Z")
    ]
    revoked = api.client.get(f"/v1/vouchers/{ids[1]}", headers={"X-API-Key": key}).json()
    assert revoked["revoked_at"] is not None and revoked["redemptions"] == []

    other = api.merchant_key("m2")
    assert_problem(api.client.get(f"/v1/vouchers/{ids[0]}", headers={"X-API-Key": other}), 403, "forbidden")
    assert_problem(
        api.client.get(f"/v1/deals/{deal}/vouchers", headers={"X-API-Key": other}), 403, "forbidden"
    )
    assert_problem(api.client.get("/v1/vouchers/nope", headers={"X-API-Key": key}), 404, "not_found")


def test_a_rotated_key_replaces_the_old_one_after_its_grace_period(api: Api) -> None:
    old = api.merchant_key("m1")
    rotated = api.client.post(
        "/v1/merchants/m1/keys", json={"grace_seconds": 600}, headers={"X-API-Key": old}
    )
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()["api_key"]
    for key in (old, new):  # both work during the grace period
        assert api.client.get("/v1/deals", headers={"X-API-Key": key}).status_code == 200
    again = api.client.post("/v1/merchants/m1/keys", json={"grace_seconds": 0}, headers={"X-API-Key": new})
    newest = again.json()["api_key"]
    assert api.client.get("/v1/deals", headers={"X-API-Key": newest}).status_code == 200
    assert_problem(api.client.get("/v1/deals", headers={"X-API-Key": new}), 401, "unauthorized")
    too_long = api.client.post(
        "/v1/merchants/m1/keys", json={"grace_seconds": 10**9}, headers={"X-API-Key": newest}
    )
    assert_problem(too_long, 422, "invalid_request")


def test_another_merchants_path_is_forbidden_in_plain_words(api: Api) -> None:
    key = api.merchant_key("m1")
    problem = assert_problem(
        api.client.post("/v1/merchants/cafe-r/keys", headers={"X-API-Key": key}), 403, "forbidden"
    )
    assert problem["detail"] == "the API key is not the key of merchant 'cafe-r'"


def test_the_openapi_schema_has_the_merchants_routes(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    assert "get" in paths["/v1/devices"] and "get" in paths["/v1/vouchers/{voucher_id}"]
    assert (
        "get" in paths["/v1/deals/{deal_id}/vouchers"] and "post" in paths["/v1/merchants/{merchant_id}/keys"]
    )
