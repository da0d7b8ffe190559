"""Hot deals on the Redis gate: a deal's stock split over buckets (a cluster slot each).

The whole gate contract also runs with every deal bucketed (``redis-buckets`` in
``conftest.py``); these tests pin what only buckets have: stock moving to the bucket where the
claims are, and a move that a process left half done (it died between the two steps).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from shopcardd_backend.gates.base import ClaimAttempt, DealTerms, Outcome, RateCount
from shopcardd_backend.gates.redis import RedisClaimGate, bucket_tag, home_bucket

pytestmark = pytest.mark.redis
NOW = 1_900_000_000
_keys = itertools.count()


def users_of_bucket(bucket: int, buckets: int, count: int) -> list[str]:
    """``count`` user ids whose claims all live in ``bucket``."""
    users = (f"user-{n}" for n in itertools.count())
    return list(itertools.islice((u for u in users if home_bucket(u, buckets) == bucket), count))


def claim(gate: RedisClaimGate, user: str, deal: str = "hot") -> Outcome:
    n = next(_keys)
    return gate.claim(ClaimAttempt(deal, user, f"k{n}", f"v{n}", NOW)).outcome


@pytest.fixture
def gate(make_gate: Callable[..., Any]) -> RedisClaimGate:
    made = make_gate("redis-buckets")
    assert isinstance(made, RedisClaimGate)
    made.load_deal(DealTerms("hot", "m1", stock=8, per_user_limit=1, voucher_ttl_seconds=60, buckets=4))
    return made


def test_the_last_units_sell_to_the_users_of_one_bucket(gate: RedisClaimGate) -> None:
    """Every claim comes to one bucket of four: stock moves in from the others until all sold."""
    crowd = users_of_bucket(0, 4, 10)
    assert [claim(gate, user) for user in crowd[:8]] == [Outcome.ISSUED] * 8
    assert claim(gate, crowd[8]) is Outcome.SOLD_OUT
    assert claim(gate, users_of_bucket(2, 4, 1)[0]) is Outcome.SOLD_OUT
    assert gate.stock_left("hot") == 0
    assert len(gate.read_outbox(deal_id="hot", limit=None)) == 8
    assert claim(gate, crowd[0]) is Outcome.SOLD_OUT  # sold out comes before the limit, as unbucketed


def test_the_per_user_limit_and_replays_hold_across_buckets(gate: RedisClaimGate) -> None:
    user = users_of_bucket(3, 4, 1)[0]
    first = gate.claim(ClaimAttempt("hot", user, "same", "v-first", NOW))
    again = gate.claim(ClaimAttempt("hot", user, "same", "v-again", NOW))
    assert first.outcome is Outcome.ISSUED and again.outcome is Outcome.REPLAYED
    assert again.voucher == first.voucher
    assert claim(gate, user) is Outcome.LIMIT_REACHED


def test_a_move_a_dead_process_left_half_done_is_finished_and_nothing_is_lost(gate: RedisClaimGate) -> None:
    """The donor's stock went down and the journal holds the units; the home bucket never got
    them (the mover died). They still count as stock, and the next refill delivers them once."""
    donor = gate._move_keys(bucket_tag("hot", 1))
    taken, *journal = gate._scripts["move"](keys=donor, args=["dead-mover", 2])
    assert int(taken) == 1 and journal == []  # half of bucket 1's two units, journaled for bucket 2
    assert gate.stock_left("hot") == 8
    crowd = users_of_bucket(0, 4, 9)
    assert [claim(gate, user) for user in crowd[:8]] == [Outcome.ISSUED] * 8
    assert claim(gate, crowd[8]) is Outcome.SOLD_OUT
    assert gate.stock_left("hot") == 0
    # Finishing the dead mover's move again (it woke up) changes nothing: credited once.
    gate._scripts["credit"](keys=gate._credit_keys(bucket_tag("hot", 2)), args=["dead-mover", 1])
    assert gate.stock_left("hot") == 0
    assert claim(gate, users_of_bucket(2, 4, 1)[0]) is Outcome.SOLD_OUT


def test_a_move_sent_twice_takes_its_units_once(gate: RedisClaimGate) -> None:
    """A client resends a script whose connection closed before the answer (redis-py's cluster
    client does): the second run of a move finds its id journaled and takes nothing."""
    donor = gate._move_keys(bucket_tag("hot", 1))
    assert int(gate._scripts["move"](keys=donor, args=["m", 2])[0]) == 1
    taken, *journal = gate._scripts["move"](keys=donor, args=["m", 2])
    assert int(taken) == 0 and journal == ["m", "1 2"]
    assert gate.stock_left("hot") == 8
    crowd = users_of_bucket(0, 4, 9)
    assert [claim(gate, user) for user in crowd] == [Outcome.ISSUED] * 8 + [Outcome.SOLD_OUT]


def test_a_bucketed_deal_is_cancelled_in_every_bucket(gate: RedisClaimGate) -> None:
    crowd = users_of_bucket(1, 4, 3)
    assert [claim(gate, user) for user in crowd] == [Outcome.ISSUED] * 3
    gate.cancel("hot")
    assert {claim(gate, users_of_bucket(b, 4, 1)[0]) for b in range(4)} == {Outcome.SALE_NOT_OPEN}
    assert gate.stock_left("hot") == 5


def test_a_claims_rate_counters_are_counted_once_when_it_is_sent_again(
    gate: RedisClaimGate, make_gate: Callable[..., Any]
) -> None:
    """A bucketed claim can take several script calls: a process that had not seen the deal
    asks the wrong bucket first, and a claim whose bucket is empty is sent again once stock
    moved in. Its rate counters count it once all the same."""
    crowd = users_of_bucket(1, 4, 4)
    stranger = make_gate("redis", prefix=gate.prefix)  # another process: it thinks 1 bucket
    from_here = RateCount(("a:192.0.2.1",), (10,), NOW, 60)
    for n, who in enumerate([stranger, gate, gate, gate]):  # bucket 1 holds 2 units: then a move
        decision = who.claim(ClaimAttempt("hot", crowd[n], "k", f"v{n}", NOW, rate_count=from_here))
        assert (decision.outcome, decision.hits) == (Outcome.ISSUED, (n + 1,))
    assert gate.stock_left("hot") == 4


def test_units_moving_behind_the_sweep_are_not_answered_sold_out(
    gate: RedisClaimGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refill reads the other buckets one after the other. Units that another process moves,
    meanwhile, from a bucket it has yet to read into one it has read are still found and sold:
    the deal is not sold out while they are left."""
    gate.load_deal(DealTerms("late", "m1", stock=3, per_user_limit=1, voucher_ttl_seconds=60, buckets=3))
    first, second = (users_of_bucket(bucket, 3, 2) for bucket in (0, 1))
    assert [claim(gate, first[0], "late"), claim(gate, second[0], "late")] == [Outcome.ISSUED] * 2
    behind, read = bucket_tag("late", 2), bucket_tag("late", 1)  # bucket 2 holds the last unit
    run, moved = gate._run, []

    def run_with_a_move_behind_the_sweep(name: str, keys: list[str], args: list[Any]) -> Any:
        if name == "move" and keys == gate._move_keys(behind) and not moved:  # the sweep read bucket 1
            moved.append(run("move", gate._move_keys(behind), ["elsewhere", 1])[0])
            run("credit", gate._credit_keys(read), ["elsewhere", moved[0]])
            run("settle", gate._move_keys(behind)[1:], ["elsewhere"])
        return run(name, keys, args)

    monkeypatch.setattr(gate, "_run", run_with_a_move_behind_the_sweep)
    assert claim(gate, first[1], "late") is Outcome.ISSUED
    assert moved == [1], "the unit moved from bucket 2 to bucket 1 while the sweep was between them"
    assert gate.stock_left("late") == 0
    assert claim(gate, second[1], "late") is Outcome.SOLD_OUT


def test_a_move_a_dead_process_left_in_the_claimers_own_bucket_is_finished(gate: RedisClaimGate) -> None:
    """The dead mover took units out of the very bucket the next claims live in: its journal is
    read too, so the units reach their bucket and sell, instead of the deal answering sold out."""
    gate.load_deal(DealTerms("stuck", "m1", stock=2, per_user_limit=1, voucher_ttl_seconds=60, buckets=2))
    taken, *_ = gate._scripts["move"](keys=gate._move_keys(bucket_tag("stuck", 0)), args=["dead-mover", 1])
    assert int(taken) == 1 and gate.stock_left("stuck") == 2  # on its way from bucket 0 to bucket 1
    crowd = users_of_bucket(0, 2, 3)
    outcomes = [claim(gate, user, "stuck") for user in crowd]
    assert outcomes == [Outcome.ISSUED, Outcome.ISSUED, Outcome.SOLD_OUT]
