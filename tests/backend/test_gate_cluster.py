"""The Redis claim gate on a real Redis Cluster: six nodes of the machine's redis-server (three
primaries, three replicas) on free loopback ports, made with ``redis-cli --cluster create``.

Claims run across many deals and one hot deal split over buckets while one primary fails over
to its replica (``CLUSTER FAILOVER``, the coordinated switch an operator or an upgrade makes):
from threads, one claim at a time each, and from an API process's way of claiming, asyncio
tasks whose calls go out pipelined by node.
A client retries an unavailable answer with the same Idempotency-Key, as a real one does.
Afterwards: no deal sold more than its stock, nobody above the limit, every voucher answered
ISSUED is in the outbox, and the relay's reads (lease, read, ack) and a rebuild work there too.
A gate given several nodes starts while the first of them is down.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servers import free_port
from shopcardd_backend.gates.base import (
    ClaimAttempt,
    ClaimDecision,
    DealTerms,
    GateUnavailable,
    Outcome,
    RateCount,
)
from shopcardd_backend.gates.redis import RedisClaimGate
from shopcardd_bench.rediscluster import Cluster, running_cluster
from shopcardd_voucher import Voucher, new_voucher_id

pytestmark = [pytest.mark.slow, pytest.mark.redis]

DEALS, STOCK, LIMIT, USERS, CLAIMS = 24, 30, 2, 200, 6_000
HOT_STOCK, HOT_BUCKETS = 150, 6
"""Fewer units than users (one each): the hot deal sells out, its last units from any bucket."""


def answer_of(decision: ClaimDecision) -> tuple[Outcome, str | None]:
    return decision.outcome, decision.voucher.voucher_id if decision.voucher else None


def voucher_of(event: dict[str, Any]) -> Voucher:
    deal, user = event["deal_id"], event["user_id"]
    return Voucher(event["voucher_id"], deal, user, "m1", event["issued_at"], event["expires_at"])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three primaries with a replica each; a node silent for 2 s is failed over."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("needs redis-server and redis-cli")
    with running_cluster(tmp_path, primaries=3, replicas=1, node_timeout_ms=2000) as made:
        yield made


def test_claims_on_a_redis_cluster_survive_a_failover(cluster: Cluster) -> None:
    gate = RedisClaimGate(cluster.url, prefix="cl", cluster=True)
    deals = [f"d{n}" for n in range(DEALS)]
    for deal in deals:
        gate.load_deal(DealTerms(deal, "m1", STOCK, LIMIT, 3600))
    gate.load_deal(DealTerms("hot", "m1", HOT_STOCK, 1, 3600, buckets=HOT_BUCKETS))
    targets = [*deals, *["hot"] * DEALS]  # half the claims go to the hot deal
    rng = random.Random(7)
    work = [(rng.choice(targets), f"u{rng.randrange(USERS)}", f"k{n}") for n in range(CLAIMS)]
    answers: dict[tuple[str, str, str], tuple[Outcome, str | None]] = {}

    switched = threading.Event()

    def claim_one(deal: str, user: str, key: str) -> None:
        voucher_id = new_voucher_id()
        while True:
            try:
                decision = gate.claim(ClaimAttempt(deal, user, key, voucher_id, int(time.time())))
                break
            except GateUnavailable:  # the failover: retry with the same key
                time.sleep(0.05)
        answers[deal, user, key] = answer_of(decision)

    def claim(part: list[tuple[str, str, str]], thread: int) -> None:
        for deal, user, key in part:
            claim_one(deal, user, key)
        extra = 0
        while not switched.is_set():  # a slow failover: claims go on until it is done
            claim_one(rng_of_thread[thread].choice(targets), f"u{extra % USERS}", f"x{thread}-{extra}")
            extra += 1
        claim_one(rng_of_thread[thread].choice(targets), "after", f"x{thread}-after")

    async def answered_async(on: RedisClaimGate, deal: str, user: str, key: str) -> None:
        attempt = ClaimAttempt(deal, user, key, new_voucher_id(), int(time.time()))
        while True:
            try:
                decision = await on.claim_async(attempt)
                break
            except GateUnavailable:  # the failover, or a node still closing its clients after it
                await asyncio.sleep(0.05)
        answers[deal, user, key] = answer_of(decision)

    async def claim_async(on: RedisClaimGate, part: list[tuple[str, str, str]], task: int = -1) -> None:
        """The API's way: the asyncio cluster client, the calls of all the claims in flight
        pipelined by node. With a ``task`` number, claims go on until the failover is done."""
        for deal, user, key in part:
            await answered_async(on, deal, user, key)
        extra = 0
        while task >= 0 and not switched.is_set():
            deal = rng_of_task[task].choice(targets)
            await answered_async(on, deal, f"u{extra % USERS}", f"y{task}-{extra}")
            extra += 1

    def api_process(part: list[tuple[str, str, str]]) -> None:
        """Another API process during the failover: a gate of its own, claims in 8 tasks."""
        other = RedisClaimGate(cluster.url, prefix="cl", cluster=True)

        async def tasks() -> None:
            try:
                await asyncio.gather(*(claim_async(other, part[n::8], n) for n in range(8)))
            finally:
                await other.aclose()

        with other:
            asyncio.run(tasks())

    rng_of_thread = [random.Random(thread) for thread in range(8)]
    rng_of_task = [random.Random(100 + task) for task in range(8)]
    api_work = [(rng.choice(targets), f"u{rng.randrange(USERS)}", f"s{n}") for n in range(CLAIMS // 2)]
    # Daemons: should the test fail, its claimers (retrying an unavailable gate) do not keep
    # the test session from ending.
    threads = [threading.Thread(target=claim, args=(work[n::8], n), daemon=True) for n in range(8)]
    threads.append(threading.Thread(target=api_process, args=(api_work,), daemon=True))
    for thread in threads:
        thread.start()
    while len(answers) < CLAIMS // 4:  # mid-run: the primary of the hot deal's first bucket hands over
        time.sleep(0.01)
    slot = int(cluster.cli(next(iter(cluster.nodes)), "CLUSTER", "KEYSLOT", gate.deal_keys("hot")[0]))
    replica = cluster.replica_of_slot(slot)
    for _ in range(6):  # a manual failover the primary does not ack in time is dropped: ask again
        assert cluster.cli(replica, "CLUSTER", "FAILOVER").strip() == "OK"
        deadline = time.monotonic() + 10
        while "role:master" not in cluster.cli(replica, "INFO", "replication"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if "role:master" in cluster.cli(replica, "INFO", "replication"):
            break
    assert "role:master" in cluster.cli(replica, "INFO", "replication"), "the replica never took over"
    answered_at_switch = len(answers)
    switched.set()
    for thread in threads:
        thread.join()
    assert answered_at_switch < len(answers), "no claim was answered after the replica took over"
    cluster.wait_ok()
    gate.check()  # readiness: the claim step and the eviction policy, through the cluster

    async def flood() -> None:
        extra = [(rng.choice(targets), f"u{rng.randrange(USERS)}", f"a{n}") for n in range(400)]
        await asyncio.gather(*(claim_async(gate, extra[n::16]) for n in range(16)))
        # The claim rate limits' counters: a key each, in slots of their own, counted in one call.
        assert await gate.count_async(names, 0, 60) == [1] * 4
        assert await gate.count_async(names, 0, 60) == [2] * 4
        # A claim's own counters: counted in calls before its script (they are in other slots).
        over = await gate.claim_async(counted_claim())
        assert (over.outcome, over.hits) == (Outcome.RATE_LIMITED, (3,) * 4)
        await gate.aclose()

    names = ["u:alice", "u:bob", "a:192.0.2.1", "a:2001:db8::/64"]

    def counted_claim() -> ClaimAttempt:
        """A claim over the limit of its third counter (2) once the flood counted them all twice."""
        counted = RateCount(tuple(names), (100, 100, 2, 100), 0, 60)
        now = int(time.time())
        return ClaimAttempt(deals[0], "alice", "counted", new_voucher_id(), now, rate_count=counted)

    asyncio.run(flood())
    assert gate.claim(counted_claim()).hits == (4,) * 4, "the blocking client counts them the same"

    issued: dict[str, list[str]] = {}
    for (deal, _, _), (outcome, voucher) in answers.items():
        assert outcome in (Outcome.ISSUED, Outcome.REPLAYED, Outcome.SOLD_OUT, Outcome.LIMIT_REACHED)
        if outcome is Outcome.ISSUED or outcome is Outcome.REPLAYED:
            issued.setdefault(deal, []).append(voucher or "")
    for deal, stock, limit in [*((d, STOCK, LIMIT) for d in deals), ("hot", HOT_STOCK, 1)]:
        events = [e.payload for e in gate.read_outbox(deal_id=deal, limit=None)]
        assert sorted(e["voucher_id"] for e in events) == sorted(issued.get(deal, [])), deal
        assert len(events) + gate.stock_left(deal) == stock, deal
        assert max(Counter(e["user_id"] for e in events).values()) <= limit, deal
    assert gate.stock_left("hot") == 0, "the hot deal sells out, bucket by bucket"
    assert sum(outcome is Outcome.SOLD_OUT for (deal, *_), (outcome, _) in answers.items() if deal == "hot")

    hot_events = [e.payload for e in gate.read_outbox(deal_id="hot", limit=None)]
    # The relay's reads: every event leased once, acknowledged, gone.
    leased: list[str] = []
    while batch := gate.lease_outbox("relay-1", limit=500):
        leased += [event.event_id for event in batch]
        gate.ack_outbox(event.event_id for event in batch)
    assert len(leased) == len(set(leased)) == sum(len(v) for v in issued.values())
    assert gate.read_outbox(limit=None) == []

    # A rebuild (what deal rebuild does once the gate lost a deal) spreads the vouchers of the hot
    # deal over its buckets again: the same stock left, the same limits and replays.
    claimed = [(e["idempotency_key"], voucher_of(e)) for e in hot_events]
    gate.load_deal(DealTerms("hot", "m1", HOT_STOCK, 1, 3600), claimed=claimed)
    assert gate.stock_left("hot") == 0
    key, voucher = claimed[0]
    replay = gate.claim(ClaimAttempt("hot", voucher.user, key, "other", int(time.time())))
    assert replay.outcome is Outcome.REPLAYED and replay.voucher == voucher
    gate.close()


def test_a_gate_starts_from_any_node_of_the_list_when_the_first_is_down(cluster: Cluster) -> None:
    """``SHOPCARDD_REDIS_URL`` lists several nodes: one that does not answer (a port nobody
    listens on, first in the list, as a primary just killed) keeps neither client from starting."""
    url = ",".join([f"redis://127.0.0.1:{free_port()}/0", *cluster.primary_urls()])

    def attempt(user: str) -> ClaimAttempt:
        return ClaimAttempt("d1", user, "k", new_voucher_id(), int(time.time()))

    with RedisClaimGate(url, prefix="nodes", cluster=True) as gate:  # the sync client starts here
        gate.load_deal(DealTerms("d1", "m1", STOCK, LIMIT, 3600))
        assert gate.claim(attempt("alice")).outcome is Outcome.ISSUED

        async def claim_async() -> ClaimDecision:
            try:  # the asyncio client starts on its first call
                return await gate.claim_async(attempt("bob"))
            finally:
                await gate.aclose()

        assert asyncio.run(claim_async()).outcome is Outcome.ISSUED
        assert gate.stock_left("d1") == STOCK - 2
