"""Demo chapter: the claim API on the embedded profile, a flash sale under load, and a voucher
handed to the counter."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from demo import Demo, DemoFailed

STOCK, LIMIT, USERS, CLAIMS_PER_USER, IN_FLIGHT = 20, 2, 15, 12, 32
BOT_CLAIMS = 200
"""Claims the bot may send before the rate limit must have refused one (30 a minute by default)."""
REFUSALS = {
    "sold_out": "sold out (sold_out)",
    "limit_reached": "over the per-customer limit (limit_reached)",
}
"""The refusals the flood may meet, in words; any other is a failure of the demo."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, server: Any, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise DemoFailed(f"the backend exited with {server.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise DemoFailed(f"the backend was not ready within 60 s; see {log}")


Answer = tuple[str, str, int, dict[str, Any]]
"""(user, idempotency key, HTTP status, JSON body) of one claim."""


async def _flood(demo: Demo, url: str, deal_id: str, tokens: dict[str, str]) -> list[Answer]:
    """Every user claims CLAIMS_PER_USER times (each a new Idempotency-Key), IN_FLIGHT at once.
    A progress bar on a terminal only (``make demo > log`` gets no carriage returns); a summary
    line either way."""
    import httpx
    from tqdm import tqdm

    attempts = [(user, f"{user}-try{n}") for n in range(CLAIMS_PER_USER) for user in tokens]
    random.Random(42).shuffle(attempts)  # eager customers come back before the sale is over
    limiter = asyncio.Semaphore(IN_FLIGHT)
    results: list[Answer] = []
    started = time.perf_counter()
    with tqdm(total=len(attempts), desc="  claims", unit="claim", leave=True, disable=None) as bar:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def claim(user: str, key: str) -> None:
                async with limiter:
                    headers = {"Authorization": f"Bearer {tokens[user]}", "Idempotency-Key": key}
                    answer = await client.post(f"/v1/deals/{deal_id}/claims", headers=headers)
                results.append((user, key, answer.status_code, answer.json()))
                bar.update()

            await asyncio.gather(*(claim(user, key) for user, key in attempts))
    demo.say(f"  {len(results)} claims answered in {time.perf_counter() - started:.1f} s")
    return results


def _in_words(refused: Counter[str]) -> str:
    """``159 sold out (sold_out), 1 over the per-customer limit (limit_reached)``."""
    return ", ".join(f"{count} {REFUSALS.get(code, code)}" for code, count in refused.most_common()) or "none"


def _claim(url: str, deal_id: str, token: str, key: str) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    return httpx.post(f"{url}/v1/deals/{deal_id}/claims", headers=headers)


def _greedy_customer(demo: Demo, url: str, deal_id: str, user: str, token: str) -> list[Answer]:
    """One customer asks for one voucher more than the limit, one claim after another."""
    demo.say(f"{user} asks for {LIMIT + 1} vouchers, one claim after another (a new Idempotency-Key each):")
    results = []
    for n in range(1, LIMIT + 2):
        answer = _claim(url, deal_id, token, f"{user}-claim{n}")
        body = answer.json()
        results.append((user, f"{user}-claim{n}", answer.status_code, body))
        shown = (
            f"voucher {body['voucher_id']}"
            if answer.status_code == 201
            else f"{body.get('code')}: {body.get('detail')}"
        )
        demo.say(f"  claim {n}: {answer.status_code} {shown}")
    if [status for _, _, status, _ in results[:LIMIT]] != [201] * LIMIT or body.get(
        "code"
    ) != "limit_reached":
        raise DemoFailed(f"the per-customer limit did not hold: {results}")
    demo.refused(f"claim {LIMIT + 1} of {user}: over the per-customer limit of {LIMIT} -> limit_reached")
    return results


def _bot(demo: Demo, url: str, deal_id: str, token: str) -> None:
    """A script sends claim after claim with one customer's token until the API refuses it for the
    rate (per customer and minute: SHOPCARDD_CLAIM_RATE_PER_USER, 30 by default). The window is a
    fixed minute, so up to twice the limit can pass across its turn: the loop allows for more."""
    demo.say("A bot sends claim after claim with one customer's token, a new Idempotency-Key each:")
    before: Counter[str] = Counter()
    for n in range(1, BOT_CLAIMS + 1):
        answer = _claim(url, deal_id, token, f"bot-{n}")
        body = answer.json()
        if answer.status_code != 429:
            before[f"{answer.status_code} {body.get('code', 'voucher')}"] += 1
            continue
        demo.say(f"  claims 1 to {n - 1}: {', '.join(f'{count} x {what}' for what, count in before.items())}")
        retry = answer.headers["retry-after"]
        demo.say(f"  claim {n}: 429 {body['code']}: {body['detail']} (Retry-After: {retry})")
        demo.refused(f"claim {n} of the bot: over the claim rate per customer -> rate_limited")
        return
    raise DemoFailed(f"{BOT_CLAIMS} claims of one customer in a row were never refused for the rate")


def _counter_config(original: Path, keyset: Path, merchant: str, out: Path) -> Path:
    """A copy of the counter's config for ``shopcardd-device verify`` only: the backend's key set,
    the deal's merchant, a ledger of its own, and no ``[camera]`` table (verify reads the tokens
    and images it is given, and the original's camera folder is relative to another folder)."""
    head, *tables = original.read_text().split("\n[")
    replaced = {"keyset": json.dumps(str(keyset)), "merchant_id": json.dumps(merchant)}
    replaced["data_dir"] = json.dumps(str(out.parent / "counter-backend-data"))
    for name, value in replaced.items():
        pattern = re.compile(rf"^{name}\s*=.*$", re.MULTILINE)
        line = f"{name} = {value}"
        head = pattern.sub(line, head) if pattern.search(head) else f"{line}\n{head}"
    note = f"# {original.name} for `shopcardd-device verify` of the API's vouchers: no [camera] table\n"
    kept = [table for table in tables if not table.startswith("camera]")]
    out.write_text("\n[".join([note + head, *kept]))
    return out


def run(demo: Demo) -> None:
    import httpx

    demo.chapter("3. The claim API: a flash sale on the embedded profile")
    demo.say("No settings: the backend keeps its SQLite claim gate, its store and its keys under")
    demo.say(f"SHOPCARDD_DATA_DIR ({demo.env['SHOPCARDD_DATA_DIR']}).")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = demo.out / "backend.log"
    server = demo.spawn("shopcardd-backend", "serve", "--port", str(port), log=log)
    demo.at_end(lambda: _stop(demo, server, log))  # the sync chapter uses it too
    _wait_ready(url, server, log)
    demo.ok(f"backend ready at {url} (GET /readyz ran the claim gate end to end)")

    created = demo.run("shopcardd-backend", "merchant", "create", "--merchant", "cafe-42")
    api_key = created.stdout.strip().splitlines()[-1]
    demo.say(f"The merchant starts a sale of {STOCK} vouchers, at most {LIMIT} per customer:")
    body = {
        "title": "Half-price flat white",
        "stock": STOCK,
        "per_user_limit": LIMIT,
        "voucher_ttl_seconds": 3600,
    }
    demo.say(f"  POST /v1/deals  X-API-Key: {api_key[:8]}...  {json.dumps(body)}")
    deal = httpx.post(f"{url}/v1/deals", json=body, headers={"X-API-Key": api_key}).json()
    if "deal_id" not in deal:
        raise DemoFailed(f"deal not created: {deal}")
    demo.ok(f"deal {deal['deal_id']} created, stock_left {deal['stock_left']}")

    users = [f"user{i:02d}" for i in range(USERS)]
    minted = demo.run("shopcardd-backend", "user-token", *users, show=False).stdout.split()
    tokens = dict(zip(users, minted, strict=True))
    demo.say(f"  ({len(tokens)} bearer tokens, one per line, signed by the development identity key)")
    greedy = _greedy_customer(demo, url, deal["deal_id"], users[0], tokens[users[0]])
    demo.say(
        f"Then the rush: {USERS} customers each claim {CLAIMS_PER_USER} times ({USERS * CLAIMS_PER_USER} "
        f"claims, {IN_FLIGHT} in flight at once; {users[0]} tries again too):"
    )
    rush = asyncio.run(_flood(demo, url, deal["deal_id"], tokens))
    refused = Counter(str(answer.get("code")) for _, _, status, answer in rush if status != 201)
    rush_issued = len(rush) - refused.total()
    demo.say(f"  {rush_issued} vouchers issued in the rush (201); refused: {_in_words(refused)}")

    results = greedy + rush
    issued = [(user, key, answer) for user, key, status, answer in results if status == 201]
    refused = Counter(str(answer.get("code")) for _, _, status, answer in results if status != 201)
    per_user = Counter(user for user, _, _ in issued)
    ids = {answer["voucher_id"] for _, _, answer in issued}
    if len(issued) != STOCK or len(ids) != STOCK:
        raise DemoFailed(f"expected exactly {STOCK} distinct vouchers, got {len(issued)} ({len(ids)} ids)")
    first = f"{LIMIT} to {users[0]} first, {rush_issued} in the rush"
    demo.ok(f"exactly the stock was issued: {STOCK} vouchers ({first}), {STOCK} distinct voucher ids")
    if max(per_user.values()) > LIMIT or set(refused) - set(REFUSALS):
        raise DemoFailed(f"limit broken or unexpected refusals: {per_user.most_common(3)} {refused}")
    demo.ok(f"nobody exceeded the limit: at most {max(per_user.values())} vouchers per customer")
    left = httpx.get(f"{url}/v1/deals/{deal['deal_id']}").json()["stock_left"]
    demo.ok(f"GET /v1/deals/{deal['deal_id']} says stock_left {left}")

    user, key, voucher = issued[0]
    demo.say(f"{user}'s app retries a claim after a lost answer (same Idempotency-Key {key}):")
    again = httpx.post(
        f"{url}/v1/deals/{deal['deal_id']}/claims",
        headers={"Authorization": f"Bearer {tokens[user]}", "Idempotency-Key": key},
    )
    if again.status_code != 200 or again.json()["voucher_id"] != voucher["voucher_id"]:
        raise DemoFailed(f"the retry did not return the same voucher: {again.status_code} {again.text}")
    demo.ok(f"200 with the same voucher {voucher['voucher_id']}, no second voucher issued")
    bot_token = demo.run("shopcardd-backend", "user-token", "bot01", show=False).stdout.split()[0]
    _bot(demo, url, deal["deal_id"], bot_token)

    jwks_path = demo.out / "backend-jwks.json"
    jwks_path.write_text(httpx.get(f"{url}/.well-known/jwks.json").text)
    demo.ok(f"GET /.well-known/jwks.json saved to {jwks_path.name} (the counter's key set)")
    config = Path(str(demo.facts["device_config"]))  # chapter 2's counter
    copy = _counter_config(config, jwks_path, voucher["merchant_id"], demo.out / "device-backend.toml")
    demo.say(f"{user} shows voucher {voucher['voucher_id']} at the counter of {voucher['merchant_id']}:")
    demo.run("shopcardd-device", "verify", "--config", copy.relative_to(demo.out), voucher["token"])
    demo.ok("the counter accepted a voucher the API issued, offline, with the published keys")
    metrics = httpx.get(f"{url}/metrics").text
    for line in metrics.splitlines():
        if line.startswith("shopcardd_claims_total{"):
            demo.say(f"  /metrics  {line}")
    demo.facts.update(
        backend_url=url,
        api_key=api_key,
        shop=voucher["merchant_id"],
        deal_id=deal["deal_id"],
        unused_vouchers=[answer for _, _, answer in issued[1:]],
    )


def _stop(demo: Demo, server: Any, log: Path) -> None:
    """Stop the backend and check that it stopped cleanly (after the last chapter that uses it)."""
    demo.say("\nThe backend is stopped:")
    server.terminate()
    code = server.wait(timeout=30)
    # uvicorn finishes its graceful shutdown, then dies of the SIGTERM it caught (as systemd expects).
    if code not in (0, -signal.SIGTERM) or "Application shutdown complete" not in log.read_text():
        raise DemoFailed(f"the backend did not stop cleanly (exit {code}); see {log}")
    demo.ok("backend stopped cleanly: SIGTERM, requests drained, gate and store closed")
    demo.say("To try the API yourself: .venv/bin/shopcardd-backend serve --port 8000, then OpenAPI at")
    demo.say("http://127.0.0.1:8000/docs while it runs (docs/backend-api.md walks through it).")
