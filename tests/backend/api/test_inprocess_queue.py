"""Without RabbitMQ the API process runs the queue's jobs itself: every claim's voucher reaches
the store, and the deal's stats count what was issued and refused."""

from __future__ import annotations

from waiting import until

from .conftest import Api, assert_problem


def test_claims_reach_the_store_and_the_stats_without_a_broker(api: Api) -> None:
    key = api.merchant_key("m1")
    deal = api.create_deal(key, stock=2, per_user_limit=1)["deal_id"]
    issued = {api.claim(deal, api.user_token(user), "k").json()["voucher_id"] for user in ("ann", "bo")}
    assert_problem(api.claim(deal, api.user_token("ann"), "k2"), 409, "sold_out")
    assert_problem(api.claim(deal, api.user_token("cy"), "k"), 409, "sold_out")
    store = api.client.app.state.runtime.store  # type: ignore[attr-defined]
    until(lambda: {v.voucher_id for v in store.vouchers_of_deal(deal)} == issued, "vouchers stored")

    def totals() -> dict[str, int]:
        return api.client.get(f"/v1/deals/{deal}/stats", headers={"X-API-Key": key}).json()["totals"]

    until(lambda: totals().get("sold_out") == 2, "refusals counted")
    assert totals() == {"issued": 2, "sold_out": 2, "limit_reached": 0, "sale_not_open": 0}
    assert api.client.app.state.runtime.gate.read_outbox() == []  # type: ignore[attr-defined]
