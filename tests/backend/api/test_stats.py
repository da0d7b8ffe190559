"""GET /v1/deals/{deal_id}/stats: a merchant sees its deal's claims, issued and refused, by minute.

The counts come through the analytics worker: the test hands the outbox to it as the embedded
profile's in-process queue does, then reads what the merchant would."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shopcardd_backend.events import parse_event
from shopcardd_backend.queue.inprocess import InProcessPipeline
from shopcardd_backend.runtime import Runtime
from shopcardd_backend.stores.base import NoticeOutcome
from shopcardd_backend.workers.analytics import AnalyticsHandler
from shopcardd_backend.workers.persist import PersistHandler

from .conftest import Api, assert_problem

ZERO = {"issued": 0, "sold_out": 0, "limit_reached": 0, "sale_not_open": 0}
NO_NOTICES = {"email": {"sent": 0, "refused": 0}, "sms": {"sent": 0, "refused": 0}}


def count_claims(api: Api) -> None:
    """The refusal tallies written and every outbox event through the persist and analytics
    workers, twice (as workers that died before their acks would see them again)."""
    runtime: Runtime = api.client.app.state.runtime  # type: ignore[attr-defined]
    runtime.claims.refusals.flush(runtime.outbox)
    events = [parse_event(item.payload) for item in runtime.gate.read_outbox(limit=None)]
    handlers = [PersistHandler(runtime.store), AnalyticsHandler(runtime.store)]
    for handler in handlers:
        handler.handle([event for event in events if event.type in handler.event_types])
    pipeline = InProcessPipeline(runtime.outbox, handlers, "stats-test")
    while pipeline.run_once():
        pass


def stats(api: Api, deal_id: str, key: str) -> dict[str, Any]:
    response = api.client.get(f"/v1/deals/{deal_id}/stats", headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_merchant_sees_its_deals_claims_by_minute(api: Api) -> None:
    key = api.merchant_key("m1")
    deal = api.create_deal(key, stock=2, per_user_limit=1)["deal_id"]
    alice, bob, carol = (api.user_token(user) for user in ("alice", "bob", "carol"))
    assert api.claim(deal, alice, "a1").status_code == 201
    assert api.claim(deal, alice, "a1").status_code == 200, "a replay is no new claim"
    assert api.claim(deal, alice, "a2").json()["code"] == "limit_reached"
    assert api.claim(deal, bob, "b1").status_code == 201
    assert api.claim(deal, carol, "c1").json()["code"] == "sold_out"
    assert api.claim(deal, carol, "c2").json()["code"] == "sold_out"
    count_claims(api)

    seen = stats(api, deal, key)
    assert seen["deal_id"] == deal
    assert seen["totals"] == {"issued": 2, "sold_out": 2, "limit_reached": 1, "sale_not_open": 0}
    minutes = [datetime.fromisoformat(row["minute"].replace("Z", "+00:00")) for row in seen["minutes"]]
    assert minutes == sorted(minutes) and all(
        m.second == 0 and m.utcoffset() == timedelta(0) for m in minutes
    )
    assert all(row["minute"].endswith(("Z", "+00:00")) for row in seen["minutes"])
    summed = {name: sum(row[name] for row in seen["minutes"]) for name in ZERO}
    assert summed == seen["totals"]


def test_a_deal_without_claims_has_no_minutes(api: Api) -> None:
    key = api.merchant_key("m1")
    deal = api.create_deal(key)["deal_id"]
    assert stats(api, deal, key) == {"deal_id": deal, "minutes": [], "totals": ZERO, "notices": NO_NOTICES}


def test_a_merchant_sees_the_notices_its_customers_were_sent(api: Api) -> None:
    key = api.merchant_key("m1")
    deal, other = (api.create_deal(key)["deal_id"] for _ in range(2))
    store = api.client.app.state.runtime.store  # type: ignore[attr-defined]
    for voucher_id, channel, deal_id, outcome in [  # as the notify worker records them
        ("v1", "email", deal, NoticeOutcome.SENT),
        ("v2", "email", deal, NoticeOutcome.REFUSED),
        ("v1", "sms", deal, NoticeOutcome.SENT),
        ("v3", "email", other, NoticeOutcome.SENT),
    ]:
        store.claim_notice(voucher_id, channel, deal_id)
        store.record_notice(voucher_id, channel, outcome)
    assert stats(api, deal, key)["notices"] == {
        "email": {"sent": 1, "refused": 1},
        "sms": {"sent": 1, "refused": 0},
    }


def test_a_cancelled_sale_counts_its_refused_claims(api: Api) -> None:
    key = api.merchant_key("m1")
    deal = api.create_deal(key)["deal_id"]
    api.client.post(f"/v1/deals/{deal}/cancel", headers={"X-API-Key": key})
    assert api.claim(deal, api.user_token("alice"), "a1").json()["code"] == "sale_not_open"
    count_claims(api)
    assert stats(api, deal, key)["totals"] == {**ZERO, "sale_not_open": 1}


def test_only_the_deals_own_merchant_sees_its_stats(api: Api) -> None:
    deal = api.create_deal(api.merchant_key("m1"))["deal_id"]
    other = api.merchant_key("m2")
    assert_problem(api.client.get(f"/v1/deals/{deal}/stats", headers={"X-API-Key": other}), 403, "forbidden")
    assert_problem(api.client.get(f"/v1/deals/{deal}/stats"), 401, "unauthorized")
    assert_problem(api.client.get("/v1/deals/nope/stats", headers={"X-API-Key": other}), 404, "not_found")
