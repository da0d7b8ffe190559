"""The gate under a flood: stock never below zero, no user above the limit, one voucher per
key, and the outbox holding exactly the issued claims, on real Redis and on SQLite."""

from __future__ import annotations

import multiprocessing
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shopcardd_backend.gates.base import ClaimAttempt, ClaimDecision, ClaimGate, DealTerms, Outcome
from shopcardd_backend.gates.sqlite import SqliteClaimGate
from shopcardd_voucher import new_voucher_id

MakeGate = Callable[..., Any]
NOW = 1_790_000_000
IN_FLIGHT = 64
STOCK, LIMIT, USERS, CLAIMS = 100, 2, 500, 5_000


@pytest.fixture
def gate_kind(every_gate_kind: str) -> str:
    """Every adapter, and the Redis gate with bucketed deals: the flood holds for them all."""
    return every_gate_kind


def load(gate: ClaimGate) -> None:
    gate.load_deal(DealTerms("flood", "m1", STOCK, LIMIT, 3600, NOW - 60, NOW + 3600))


def flood_attempts() -> list[ClaimAttempt]:
    """CLAIMS attempts from USERS users in random order, each with its own idempotency key."""
    attempts = [ClaimAttempt("flood", f"u{i % USERS}", f"k{i}", new_voucher_id(), NOW) for i in range(CLAIMS)]
    random.Random(4).shuffle(attempts)
    return attempts


def run(gates: Sequence[ClaimGate], attempts: Sequence[ClaimAttempt], label: str) -> list[ClaimDecision]:
    """Send the attempts from IN_FLIGHT threads, spread over ``gates``; print the rate."""
    started = time.perf_counter()
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        decisions = list(pool.map(lambda n: gates[n % len(gates)].claim(attempts[n]), range(len(attempts))))
    elapsed = time.perf_counter() - started
    print(f"\n{label}: {len(attempts)} claims in {elapsed:.2f} s, {len(attempts) / elapsed:.0f} claims/s")
    return decisions


def assert_exactly_the_stock_was_issued(gate: ClaimGate, decisions: Sequence[ClaimDecision]) -> None:
    issued = [d.voucher for d in decisions if d.outcome is Outcome.ISSUED and d.voucher is not None]
    assert len(issued) == STOCK
    assert len({v.voucher_id for v in issued}) == STOCK
    assert max(Counter(v.user for v in issued).values()) <= LIMIT
    assert {d.outcome for d in decisions} <= {Outcome.ISSUED, Outcome.SOLD_OUT, Outcome.LIMIT_REACHED}
    assert gate.stock_left("flood") == 0
    events = gate.read_outbox(limit=10 * CLAIMS)
    assert sorted(e.payload["voucher_id"] for e in events) == sorted(v.voucher_id for v in issued)


def test_a_flood_of_claims_issues_exactly_the_stock(make_gate: MakeGate, gate_kind: str) -> None:
    gate = make_gate(gate_kind)
    load(gate)
    decisions = run([gate], flood_attempts(), f"{gate_kind} gate")
    assert_exactly_the_stock_was_issued(gate, decisions)


def test_retried_keys_get_one_voucher_each(make_gate: MakeGate, gate_kind: str) -> None:
    """Every key sent five times at once, as impatient clients do: one voucher per key."""
    gate = make_gate(gate_kind)
    load(gate)
    keys = [ClaimAttempt("flood", f"u{i % USERS}", f"k{i}", "", NOW) for i in range(1_000)]
    attempts = [
        ClaimAttempt(k.deal_id, k.user_id, k.idempotency_key, new_voucher_id(), NOW) for k in keys * 5
    ]
    random.Random(5).shuffle(attempts)
    decisions = run([gate], attempts, f"{gate_kind} gate, retried keys")

    by_key: defaultdict[str, list[ClaimDecision]] = defaultdict(list)
    for attempt, decision in zip(attempts, decisions, strict=True):
        by_key[attempt.idempotency_key].append(decision)
    issued_keys = 0
    for answers in by_key.values():
        outcomes = Counter(d.outcome for d in answers)
        if Outcome.ISSUED in outcomes:
            issued_keys += 1
            assert outcomes == {Outcome.ISSUED: 1, Outcome.REPLAYED: 4}
            assert len({d.voucher for d in answers}) == 1
        else:
            assert set(outcomes) <= {Outcome.SOLD_OUT, Outcome.LIMIT_REACHED}
    assert issued_keys == STOCK
    assert len(gate.read_outbox(limit=10 * CLAIMS)) == STOCK
    assert gate.stock_left("flood") == 0


def test_two_sqlite_gates_on_one_file_share_the_stock(make_gate: MakeGate, tmp_path: Path) -> None:
    """Two connections (as two API processes would have) contend through SQLite's file lock."""
    path = tmp_path / "shared.sqlite3"
    gates = [make_gate("sqlite", path=path), make_gate("sqlite", path=path)]
    load(gates[0])
    decisions = run(gates, flood_attempts()[:1_000], "two sqlite gates, one file")
    assert_exactly_the_stock_was_issued(gates[1], decisions)


def _claim_in_process(path: str, attempts: list[ClaimAttempt]) -> list[ClaimDecision]:
    with SqliteClaimGate(path) as gate:
        return [gate.claim(attempt) for attempt in attempts]


def test_two_processes_on_one_sqlite_file_share_the_stock(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite3")
    with SqliteClaimGate(path) as gate:
        load(gate)  # and closed before the fork: a child never inherits an open connection
    attempts = flood_attempts()[:600]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        halves = pool.map(_claim_in_process, [path, path], [attempts[0::2], attempts[1::2]])
        decisions = [d for half in halves for d in half]
    with SqliteClaimGate(path) as gate:
        assert_exactly_the_stock_was_issued(gate, decisions)
