"""The rehearsal's invariants, each a line with its figure: nothing oversold, every voucher
answered 201 stored once and as signed, one notice per voucher, the stats adding up, queues
empty, every redemption synced and exactly the conflicts made on purpose, the 5xx answers,
latency and lag. Checked once the pipeline has drained (or a deadline passed)."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .figures import percentile

DRAIN_STALL_SECONDS = 60.0
"""The drain fails once its backlog has not fallen for this long: the pipeline stopped."""
DRAIN_SECONDS = 900.0
"""The drain fails past this however it goes: a backlog that falls, slowly, is waited for (the
notify worker's share lags furthest, on SecantusDB and a busy machine), not called lost."""
EXPLAINED = {(503, "unavailable")}
"""Answers that are the design's own during a fault: the gate or store said "try again" (Retry-After)."""


@dataclass
class Checks:
    results: list[tuple[bool, str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def check(self, ok: bool, text: str) -> None:
        self.results.append((ok, text))
        self.lines.append(f"{'PASS' if ok else 'FAIL'}  {text}")

    def figure(self, text: str) -> None:
        self.lines.append(f"      {text}")


def _drain(backlog: Callable[[], int | None], what: str = "draining") -> tuple[bool, float, str]:
    """Wait until ``backlog`` is 0, showing it every 10 s: (drained, seconds, why not)."""
    start = time.monotonic()
    lowest, fell_at, shown = None, start, start
    while (now := time.monotonic()) - start < DRAIN_SECONDS:
        try:
            left = backlog()
        except Exception:  # a store or broker still coming back: ask again
            left = None
        if left == 0:
            return True, now - start, ""
        if left is not None and (lowest is None or left < lowest):
            lowest, fell_at = left, now
        if now - fell_at > DRAIN_STALL_SECONDS:
            return False, now - start, f"the backlog stopped at {lowest} for {DRAIN_STALL_SECONDS:g} s"
        if now - shown >= 10:
            print(f"  {what}: {left if left is not None else '?'} left", flush=True)
            shown = now
        time.sleep(1.0)
    return False, DRAIN_SECONDS, f"{lowest} still left after {DRAIN_SECONDS:g} s"


def check_everything(
    checks: Checks,
    top: Any,
    client: Any,
    deals: dict[str, dict[str, Any]],
    tally: Any,
    answers: Any,
    shop: Any,
    doubled: list[str],
    lan_probed: list[str],
    timeline: Any,
    args: argparse.Namespace,
) -> None:
    from shopcardd_backend.gates.redis import bucket_tag

    runtime, mongo = timeline.runtime, timeline.mongo
    vouchers = mongo["shopcardd"]["vouchers"]
    won = {c.voucher_id: c for c in tally.claims if c.status == 201 and c.voucher_id}
    headers = {"X-API-Key": top.api_key}

    def issued(deal_id: str) -> int:
        deal = client.get(f"/v1/deals/{deal_id}", headers=headers).json()
        return int(deal["stock"]) - int(deal["stock_left"])

    print("  draining: outbox, queues, store", flush=True)
    total_issued = lambda: sum(issued(d["deal_id"]) for d in deals.values())  # noqa: E731

    def backlog() -> int | None:
        """Events in the outbox and queues, and vouchers issued but not stored (None: unknown)."""
        outbox, queued = timeline.outbox(), timeline.queued()
        if outbox is None or queued is None:
            return None
        return outbox + queued + max(0, total_issued() - vouchers.count_documents({}))

    drained, drain_seconds, not_drained = _drain(backlog)

    # Oversold: per deal and per bucket.
    redis = _cluster_client(top)
    for name, deal in deals.items():
        deal_id, stock = deal["deal_id"], int(deal["stock"])
        now = client.get(f"/v1/deals/{deal_id}", headers=headers).json()
        stored = vouchers.count_documents({"deal_id": deal_id})
        checks.check(
            now["stock_left"] >= 0 and stored <= stock,
            f"{name} deal: 0 oversold (stock {stock}, stock left {now['stock_left']}, "
            f"vouchers stored {stored})",
        )
        buckets = [redis.get(runtime.gate.deal_keys(bucket_tag(deal_id, b))[1]) for b in range(args.buckets)]
        left = [int(x) for x in buckets if x is not None]
        checks.check(
            all(x >= 0 for x in left) and len(left) == args.buckets,
            f"{name} deal: no bucket below zero (stock left per bucket {left})",
        )
    redis.close()
    sold_out = [a.at for a in tally.attempts if a.code == "sold_out"]
    opened = next((when for when, what in top.marks if what == "sale open"), 0.0)
    checks.figure(
        f"hot deal sold out {min(sold_out) - opened:.1f} s after the sale opened; {len(sold_out)} claims "
        "answered sold_out after that"
        if sold_out
        else "hot deal did not sell out (raise the load or lower --hot-stock)"
    )

    # Every voucher answered 201 stored once, as signed.
    import jwt

    found = {doc["_id"]: doc for doc in vouchers.find({"_id": {"$in": list(won)}})}
    mismatched = []
    for voucher_id, claim in won.items():
        doc = found.get(voucher_id)
        body = jwt.decode(claim.token, options={"verify_signature": False})
        if doc is not None and (doc["deal_id"], doc["user_id"]) != (body["deal"], body["sub"]):
            mismatched.append(voucher_id)
    missing = [v for v in won if v not in found]
    total = vouchers.count_documents({})
    gate_issued = total_issued()
    checks.check(
        not missing and not mismatched and total == gate_issued and drained,
        f"stored: {len(won) - len(missing)}/{len(won)} vouchers answered 201 are in MongoDB, "
        f"{len(mismatched)} differ from their voucher; {total} stored for {gate_issued} issued by the gate"
        + ("" if drained else f" (not drained: {not_drained})"),
    )
    if drained:
        checks.figure(f"the outbox, queues and store drained {drain_seconds:.0f} s after the sale closed")
    replays = tally.replays
    first = {(c.user, c.key): c.voucher_id for c in won.values()}
    failed = [c for c in replays if c.status >= 500 or c.status == 0]
    differing = [c for c in replays if c not in failed and c.voucher_id != first.get((c.user, c.key))]
    checks.check(
        not differing,
        f"a claim sent again with its key: {len(replays)} sent, {len(differing)} got another answer than "
        f"the same voucher ({len(failed)} a 5xx, counted below)",
    )

    # Notices: one email or SMS per voucher (even users gave an email address, odd ones a phone).
    email, sms = top.sinks["email"].notices, top.sinks["sms"].notices
    users = {doc["_id"]: doc["user_id"] for doc in vouchers.find({}, {"user_id": 1})}

    def unnoticed() -> list[str]:
        return [
            v for v, user in users.items() if (email if int(user[1:]) % 2 == 0 else sms).per_voucher[v] == 0
        ]

    _drain(lambda: len(unnoticed()), "waiting for notices")
    missing_notices = unnoticed()
    twice = [v for v, n in (email.per_voucher + sms.per_voucher).items() if n > 1]
    unread = email.unread + sms.unread
    checks.check(
        not missing_notices and not twice and not unread,
        f"notices: {sum(email.per_voucher.values())} emails, {sum(sms.per_voucher.values())} SMS for "
        f"{len(users)} vouchers; {len(missing_notices)} vouchers without one, {len(twice)} told twice "
        f"(docs/backend-queue.md: at most once), {email.unreadable + sms.unreadable} unreadable, "
        f"{sms.cut_off} SMS requests cut off by their sender"
        + (f"; without: {missing_notices[:3]}" if missing_notices else "")
        + (f"; unreadable: {unread[:1]}" if unread else "")
        + "".join(_notice_trail(v, mongo, top.folder / "logs" / "notify.log") for v in missing_notices[:3]),
    )

    # The stats: the claims issued per minute, counted from the vouchers stored, add up to them.
    expected = {name: vouchers.count_documents({"deal_id": d["deal_id"]}) for name, d in deals.items()}

    def counted() -> dict[str, int]:
        return {
            name: sum(m.issued for m in runtime.store.claims_by_minute(deal["deal_id"]))
            for name, deal in deals.items()
        }

    _drain(lambda: sum(abs(expected[name] - n) for name, n in counted().items()), "waiting for the stats")
    tallied = counted()
    checks.check(tallied == expected, f"stats: issued {tallied}, vouchers {expected}")

    # Queues.
    from shopcardd_backend.queue.rabbitmq import queue_depth

    url = next(node.url for node in top.rabbit.nodes if node.proc is not None)
    parked = {job: queue_depth(url, f"{job}.parked") for job in ("persist", "notify", "analytics")}
    checks.check(
        timeline.outbox() == 0 and timeline.queued() == 0 and not any(parked.values()),
        f"queues: outbox {timeline.outbox()}, queued {timeline.queued()}, parked {parked}",
    )

    # Sync: every redemption synced; exactly the conflicts made on purpose.
    statuses = {counter.name: counter.status() for counter in shop.counters}
    unsynced = {name: s["unsynced"] for name, s in statuses.items()}
    accepted = {name: s["accepted"] for name, s in statuses.items()}
    rejected = {name: s["rejected"] for name, s in statuses.items() if s["rejected"]}
    stored_redemptions = runtime.store.count_redemptions(top_merchant(shop))
    checks.check(
        not any(unsynced.values()) and stored_redemptions == sum(accepted.values()),
        f"sync: accepted {accepted}, unsynced {unsynced}, stored at the backend {stored_redemptions}",
    )
    second = shop.counters[1].name
    expected_refusals = {second: {"already_redeemed": 1}} if lan_probed else {}
    checks.check(
        rejected == expected_refusals and len(lan_probed) == 1,
        f"shop LAN: a voucher redeemed at {shop.counters[0].name} then brought to {second} is refused "
        f"there as already_redeemed; scans refused at the counters: {rejected or 'none'} "
        f"(expected {expected_refusals or 'the probe to run'})",
    )
    conflicts = client.get(f"/v1/merchants/{top_merchant(shop)}/conflicts", headers=headers).json()[
        "conflicts"
    ]
    seen = sorted(c["voucher_id"] for c in conflicts)
    checks.check(
        seen == sorted(doubled) and len(doubled) == 2,
        f"conflicts: {len(seen)} at the backend, {len(doubled)} made on purpose, "
        f"the same: {seen == sorted(doubled)}",
    )
    cut_syncs = [s for s in shop.syncs if s.cut]
    failed_syncs = [s for s in shop.syncs if not s.cut and s.status != 0]
    checks.check(
        not failed_syncs,
        f"syncs: {len(shop.syncs)} run, {len(failed_syncs)} failed outside the cut, "
        f"{sum(s.status != 0 for s in cut_syncs)}/{len(cut_syncs)} failed during it (as they must)",
    )

    protocols = dict(tally.protocols)
    checks.check(
        set(protocols) == {"HTTP/2"},
        f"customers spoke HTTP/2 over TLS to nginx: answers by protocol {protocols}",
    )

    # 5xx answers, each against the fault before it.
    errors = [a for a in tally.attempts if a.status >= 500 or a.status == 0]
    unexplained = [a for a in errors if (a.status, a.code) not in EXPLAINED]
    by_kind = Counter(f"{a.status} {a.code}".strip() for a in errors)
    for attempt in errors:
        before = [what for when, what in top.marks if when <= attempt.at]
        checks.errors.append(
            f"- {time.strftime('%H:%M:%S', time.localtime(attempt.at))} {attempt.status} {attempt.code}: "
            f"after '{before[-1] if before else 'the start'}'"
            + (f" ({attempt.detail})" if attempt.detail else "")
        )
    checks.check(
        not unexplained,
        f"5xx or no answer: {len(errors)} of {len(tally.attempts)} attempts ({dict(by_kind) or 'none'}); "
        f"{len(unexplained)} not a designed 503 (goal 0; each listed in report.md)",
    )

    # Latency and lag: figures against their goals.
    answered = [a.seconds for a in tally.attempts if a.status in (200, 201)]
    p50, p99 = percentile(answered, 0.5) * 1000, percentile(answered, 0.99) * 1000
    goal = args.latency_goal_ms
    checks.figure(
        f"claim latency through nginx: p50 {p50:.0f} ms, p99 {p99:.0f} ms over {len(answered)} answers "
        f"(goal {goal:g} ms: {'met' if p99 <= goal else 'missed'}); "
        f"{len(answered) / max(1, args.seconds):.0f} claims/s answered"
    )
    from .pipeline import store_lags

    lags = store_lags(answers.times, [(s[0], s[3]) for s in timeline.samples])
    checks.figure(
        f"claim -> stored lag: p50 {percentile(lags, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(lags, 0.99) * 1000:.0f} ms"
    )


def _notice_trail(voucher_id: str, mongo: Any, notify_log: Path) -> str:
    """What the store and the notify worker's log say of a voucher whose customer was not told."""
    ids = [f"{voucher_id}/{channel}" for channel in ("email", "sms")]
    taken = list(mongo["shopcardd"]["notices"].find({"_id": {"$in": ids}}))
    said = [line.strip() for line in _lines(notify_log) if voucher_id in line][-5:]
    return f"; {voucher_id}: notices stored {taken or 'none'}, notify.log {said or 'says nothing'}"


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def top_merchant(shop: Any) -> str:
    return str(shop.merchant)


def _cluster_client(top: Any) -> Any:
    from redis.cluster import RedisCluster

    port = next(port for port, proc in top.redis.nodes.items() if proc.poll() is None)
    return RedisCluster(host="127.0.0.1", port=port, decode_responses=True)
