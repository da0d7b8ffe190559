"""Demo chapter 4: two counters enrol with the backend of chapter 3, redeem offline, and sync.

One voucher is shown at both counters while the shop is offline: each accepts it (neither can
know), and after both sync the merchant sees the conflict. Another voucher is revoked on the
backend, and the counter refuses it after its next sync. Uses chapter 3's running backend
(``backend_url``, ``api_key``, ``shop``, ``deal_id``, ``unused_vouchers``); the backend is
stopped after this chapter.
"""

from __future__ import annotations

import json
from typing import Any

from demo import Demo, DemoFailed

TILLS = ("till-1", "till-2")


def _verdict(demo: Demo, till: str, token: str, expect: int) -> str:
    """Show ``token`` at ``till`` (``verify``: the same judge as the scan loop); its verdict."""
    proc = demo.run("shopcardd-device", "verify", "--config", f"{till}/device.toml", token, expect=expect)
    return proc.stdout.split()[0]


def _sync(demo: Demo, till: str) -> str:
    """One sync of ``till``; its summary line is shown (its JSON log lines are left out)."""
    out = demo.run("shopcardd-device", "sync", "--config", f"{till}/device.toml", show=False).stdout
    demo.say("  " + out.strip())
    return out


def run(demo: Demo) -> None:
    import httpx

    demo.chapter("4. Enrolment and sync: two counters, one voucher shown twice, a revocation")
    url, api_key, shop = str(demo.facts["backend_url"]), str(demo.facts["api_key"]), str(demo.facts["shop"])
    deal_id = str(demo.facts["deal_id"])
    vouchers: list[dict[str, Any]] = demo.facts["unused_vouchers"]  # type: ignore[assignment]
    twice, revoked = vouchers[0], vouchers[1]
    headers = {"X-API-Key": api_key}

    demo.say(f"A technician enrols the two tills of {shop} with the merchant's API key (chapter 3):")
    demo.say(f"$ export SHOPCARDD_API_KEY={api_key[:8]}...")
    demo.env["SHOPCARDD_API_KEY"] = api_key
    for till in TILLS:
        demo.run(
            "shopcardd-provision", "enroll", "--merchant", shop, "--device", till,
            "--backend", url, "--out", till, "--data-dir", "data",
        )  # fmt: skip
    demo.ok("each till has its own Ed25519 key; the backend holds only the public halves")

    demo.say(f"\nThe shop's internet is down. A customer shows voucher {twice['voucher_id']} at till-1,")
    demo.say("and a friend shows a screenshot of the same code at till-2, moments later:")
    seen = [_verdict(demo, till, twice["token"], 0) for till in TILLS]
    if seen != ["accepted", "accepted"]:
        raise DemoFailed(f"offline, each till should accept the voucher once: {seen}")
    demo.ok("both tills accepted it: offline, neither can know of the other's redemption")

    demo.say(
        f"\nMeanwhile the merchant refunds voucher {revoked['voucher_id']} and revokes it on the backend:"
    )
    demo.say(f"  POST /v1/vouchers/{revoked['voucher_id']}/revoke  {json.dumps({'deal_id': deal_id})}")
    answer = httpx.post(
        f"{url}/v1/vouchers/{revoked['voucher_id']}/revoke", json={"deal_id": deal_id}, headers=headers
    )
    if answer.status_code != 200:
        raise DemoFailed(f"the revocation was refused: {answer.status_code} {answer.text}")
    demo.ok(f"voucher {revoked['voucher_id']}: status {answer.json()['status']}")

    demo.say(
        "\nThe internet is back; each till's timer runs a sync (redemptions up; keys, revocations down):"
    )
    outputs = [_sync(demo, till) for till in TILLS]
    if "(1 conflict)" not in outputs[1]:
        raise DemoFailed(f"till-2's sync should report the conflict: {outputs[1]}")
    demo.say(f"  GET /v1/merchants/{shop}/conflicts")
    conflicts = httpx.get(f"{url}/v1/merchants/{shop}/conflicts", headers=headers).json()["conflicts"]
    for conflict in conflicts:
        places = ", ".join(f"{r['device_id']} at {r['redeemed_at']}" for r in conflict["redemptions"])
        demo.say(f"  voucher {conflict['voucher_id']}: redeemed at {places}")
    devices = [
        [r["device_id"] for r in c["redemptions"]]
        for c in conflicts
        if c["voucher_id"] == twice["voucher_id"]
    ]
    if devices != [list(TILLS)]:
        raise DemoFailed(f"the merchant's conflicts should list the voucher at both tills: {conflicts}")
    demo.ok(f"the merchant sees voucher {twice['voucher_id']} redeemed at till-1 and till-2")
    demo.say("till-2 knows too (its ledger keeps the backend's verdict beside its own):")
    status = demo.run("shopcardd-device", "status", "--config", "till-2/device.toml").stdout
    if "first at till-1" not in status:
        raise DemoFailed("till-2's status should show the conflict")

    demo.say(f"\nThe refunded voucher {revoked['voucher_id']} is shown at till-1 after its sync:")
    if (verdict := _verdict(demo, "till-1", revoked["token"], 1)) != "revoked":
        raise DemoFailed(f"the revoked voucher should be refused as revoked, not {verdict}")
    demo.refused("a voucher revoked on the backend, at a counter after sync -> revoked")
