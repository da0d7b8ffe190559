"""The scaled claim gate: one Lua script (``claim.lua``) decides a claim and writes its event.

``RedisClaimGate`` is the claim gate, its outbox (``redis_outbox.py``) and its rate counters
(``redis_rates.py``) over one Redis; ``redis_client.py`` holds what they share and the key
layout. A claim's script touches only its deal's keys, its outbox stream among them, so the
claim and its event are one atomic step. A timeout after the script was sent leaves the claim
either applied or not; the client's retry with the same idempotency key answers either way.

Buckets (hot deals): a deal of N buckets has N such key sets, bucket i > 0 under the tag
``{D/i}``, each with a share of the stock; a user's claims all live in their home bucket, and
an empty bucket takes stock from the others through a journaled move (``MOVE``, ``CREDIT``).
See docs/backend-storage.md, "Buckets". With ``cluster=True`` the same runs on Redis Cluster.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections import Counter
from collections.abc import Generator, Iterable
from functools import cache
from importlib.resources import files
from typing import Any

import redis

from shopcardd_voucher import Voucher

from .base import (
    ClaimAttempt,
    ClaimDecision,
    DealTerms,
    GateUnavailable,
    Outcome,
    check_claim_step,
    count_apart,
)
from .redis_client import KNOWN_FIELD, Call, bucket_tag
from .redis_outbox import RedisOutbox
from .redis_rates import RedisRateCounter

__all__ = ["RedisClaimGate", "bucket_tag", "claim_args", "claim_script_source", "home_bucket"]

MOVE = """
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
local take = math.ceil(stock / 2)
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  take = 0
end
local journal = redis.call('HGETALL', KEYS[2])
if take > 0 then
  redis.call('DECRBY', KEYS[1], take)
  redis.call('HSET', KEYS[2], ARGV[1], take .. ' ' .. ARGV[2])
end
table.insert(journal, 1, take)
return journal
"""
"""Take half the stock of a donor bucket (KEYS: its stock, its moves journal) for the bucket
ARGV[2], journaled under the move's id ARGV[1]; returns {taken, id, "n home", ...} with the
moves already in the journal (the caller finishes them: one whose mover died is not lost).
A move id already journaled takes nothing more: the cluster client sends a script again when a
connection closed under it, and a second take would overwrite the first's journal entry, losing
its units (found by ``shopcardd-bench hotdeal``'s sell-out check)."""
CREDIT = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('INCRBY', KEYS[1], ARGV[2])
end
return 1
"""
"""Add a move's units to its home bucket (KEYS: its stock, its set of credited moves) once only,
however often a move is finished (by its mover, or by another process after the mover died)."""
SETTLE = "return redis.call('HDEL', KEYS[1], ARGV[1])"
"""Strike a finished move from its donor's journal (KEYS: the journal)."""
CENSUS = """
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
return {stock, redis.call('HLEN', KEYS[2]), redis.call('SCARD', KEYS[3])}
"""
"""A bucket's stock, its moves on their way out and the moves credited to it (KEYS: its stock,
its journal, its credited set), for ``_surely_sold_out``."""
REFILLS_PER_CLAIM = 20
"""A claim whose bucket is still empty after this many refills (the last units moving between
buckets under many claims at once) answers ``GateUnavailable``: try again, not a false sold_out."""


@cache
def claim_script_source() -> str:
    return files(__package__).joinpath("claim.lua").read_text(encoding="utf-8")


def _claim_field(user_id: str, idempotency_key: str) -> str:
    """The claims-hash field of a user's key; the length prefix keeps ("a", "bc") != ("ab", "c")."""
    return f"{len(user_id)}:{user_id}{idempotency_key}"


def _record(voucher: Voucher) -> str:
    return f"{voucher.issued_at} {voucher.expires_at} {voucher.voucher_id}"


def home_bucket(user_id: str, buckets: int) -> int:
    """The bucket that holds a user's claims of a deal: all of them, so the per-user limit and
    the replays stay exact in one atomic step (CRC32: the same in every process)."""
    return zlib.crc32(user_id.encode()) % buckets if buckets > 1 else 0


def _share(stock: int, buckets: int, bucket: int) -> int:
    """Bucket ``bucket``'s part of ``stock``: as even as whole units allow."""
    return stock // buckets + (1 if bucket < stock % buckets else 0)


def claim_args(attempt: ClaimAttempt, buckets: int = 1) -> list[str | int]:
    """The script's ARGV for ``attempt`` on a deal of ``buckets`` buckets (see ``claim.lua``)."""
    return [
        attempt.user_id,
        _claim_field(attempt.user_id, attempt.idempotency_key),
        attempt.idempotency_key,
        attempt.voucher_id,
        attempt.now,
        attempt.email or "",
        attempt.phone or "",
        buckets,
        int(attempt.replay_only),
    ]


def _decision(attempt: ClaimAttempt, reply: list[Any], hits: tuple[int, ...]) -> ClaimDecision:
    """The script's reply ``{outcome, record, stock left, merchant, ...}`` as the port's decision."""
    outcome, record, stock_left, merchant_id = reply[:4]
    if outcome == Outcome.UNKNOWN_DEAL:
        return ClaimDecision(Outcome.UNKNOWN_DEAL, hits=hits)
    voucher = None
    if record:
        issued_at, expires_at, voucher_id = record.split(" ", 2)
        voucher = Voucher(
            voucher_id, attempt.deal_id, attempt.user_id, merchant_id, int(issued_at), int(expires_at)
        )
    return ClaimDecision(Outcome(outcome), voucher, stock_left if stock_left >= 0 else None, hits)


class RedisClaimGate(RedisOutbox, RedisRateCounter):
    """``ClaimGate``, ``Outbox`` and ``RateCounter`` on Redis (or Redis Cluster's layout)."""

    def __init__(self, url: str, prefix: str = "shopcardd", **options: Any) -> None:
        """``options``: ``RedisConnection``'s (cluster, buckets, timeouts, retry_after)."""
        super().__init__(url, prefix, **options)
        self._sold_out_until: dict[str, float] = {}

    def _script_sources(self) -> dict[str, str]:
        return {
            **super()._script_sources(),
            "claim": claim_script_source(),
            "move": MOVE,
            "credit": CREDIT,
            "settle": SETTLE,
            "census": CENSUS,
        }

    def _move_keys(self, tag: str) -> list[str]:
        """A bucket's stock and its journal of moves out (the MOVE script's KEYS)."""
        return [self.deal_keys(tag)[1], f"{self.prefix}:deal:{{{tag}}}:moves"]

    def _credit_keys(self, tag: str) -> list[str]:
        """A bucket's stock and the set of moves credited to it (the CREDIT script's KEYS)."""
        return [self.deal_keys(tag)[1], f"{self.prefix}:deal:{{{tag}}}:credited"]

    def load_deal(self, terms: DealTerms, claimed: Iterable[tuple[str, Voucher]] = ()) -> None:
        claimed = list(claimed)
        fields: dict[str, str | int] = {
            "merchant_id": terms.merchant_id,
            "per_user_limit": terms.per_user_limit,
            "voucher_ttl_seconds": terms.voucher_ttl_seconds,
            "starts_at": "" if terms.starts_at is None else terms.starts_at,
            "ends_at": "" if terms.ends_at is None else terms.ends_at,
        }
        if terms.cancelled:  # in the same MULTI as the terms: never claimable in between
            fields["cancelled"] = "1"
        with self._mapped_errors():
            buckets = self._held_buckets(terms.deal_id)
            if buckets is None:
                wanted = self.buckets if terms.buckets is None else terms.buckets
                buckets = max(1, min(wanted, terms.stock))
            fields["buckets"] = buckets
            left = max(terms.stock - len(claimed), 0)
            for bucket in reversed(range(buckets)):  # bucket 0 last: it tells claims of the others
                tag = bucket_tag(terms.deal_id, bucket)
                terms_key, stock_key, users_key, claims_key, outbox_key = self.deal_keys(tag)
                self._touch(tag, force=True)
                self._create_group(outbox_key)
                pipe = self._client.pipeline(transaction=True)
                pipe.hset(terms_key, mapping=fields)
                if claimed:
                    mine = [(key, v) for key, v in claimed if home_bucket(v.user, buckets) == bucket]
                    journals = self._move_keys(tag)[1], self._credit_keys(tag)[1]
                    pipe.delete(users_key, claims_key, *journals)
                    pipe.set(stock_key, _share(left, buckets, bucket))
                    if mine:
                        pipe.hset(users_key, mapping=Counter(voucher.user for _, voucher in mine))
                        records = {_claim_field(v.user, key): _record(v) for key, v in mine}
                        pipe.hset(claims_key, mapping=records)
                else:
                    pipe.set(stock_key, _share(terms.stock, buckets, bucket), nx=True)
                pipe.execute()
            self._buckets[terms.deal_id] = buckets

    def claim(self, attempt: ClaimAttempt) -> ClaimDecision:
        steps = self._claim_steps(attempt)
        with self._mapped_errors():
            try:
                call = next(steps)
                while True:
                    call = steps.send(self._run(*call))
            except StopIteration as done:
                return done.value

    async def claim_async(self, attempt: ClaimAttempt) -> ClaimDecision:
        """The same steps through redis.asyncio (hiredis parses the replies), under one deadline.

        The script calls of all the claims in flight go out together (``_Pipeliner``; on a
        cluster, one pipeline per node), each round trip under the pipeliner's own timeout, and
        a claim takes no further step once its deadline has passed: an asyncio timeout per
        claim (a timer armed, then cancelled) cost about 10 us of a claim's 180, and a call of
        its own per script on a cluster about 150 of 440 (``shopcardd-bench claims``)."""
        run = self._async_parts()
        deadline = time.monotonic() + self._client_options["socket_timeout"]
        steps = self._claim_steps(attempt)
        with self._mapped_errors():
            try:
                call = next(steps)
                while True:
                    call = steps.send(await run(*call))
                    if time.monotonic() > deadline:
                        raise TimeoutError("the claim's steps took longer than its deadline")
            except StopIteration as done:
                return done.value

    def _claim_steps(self, attempt: ClaimAttempt) -> Generator[Call, Any, ClaimDecision]:
        """The claim as script calls, each yielded and answered with its reply: ``claim`` and
        ``claim_async`` run the same steps, one blocking and one awaiting. Unbucketed, that is
        one call (and a touch of the active index once a second), which also counts the
        attempt's rate counters; on a cluster they take a call before it. Bucketed: the claim
        runs in the user's home bucket; when that one is empty, stock moves in from the others."""
        deal = attempt.deal_id
        buckets = self._buckets.get(deal, 1)
        hits: tuple[int, ...] = ()
        refills = 0
        counted = attempt.rate_count
        if counted is not None and self._cluster:  # the counters are in other slots: a call first
            hits = tuple(int(hit) for hit in (yield self._counting(counted)))
            attempt, counted = count_apart(attempt, hits), None
        while True:
            tag = bucket_tag(deal, home_bucket(attempt.user_id, buckets))
            now = self._clock()
            if self._touch_due(tag, now):
                yield ("touch", [self.active_key], [now, tag])
                self._touched[tag] = now
            keys, args = self.deal_keys(tag), claim_args(attempt, buckets)
            if counted is not None:  # counted by the script itself (one Redis: claim.lua)
                _, rate_keys, lives = self._counting(counted)
                keys, args = keys + rate_keys, [*args, *lives, *counted.limits]
            reply = yield ("claim", keys, args)
            if reply[0] == "buckets":  # this process had not seen the deal: ask its home bucket
                buckets = self._buckets[deal] = int(reply[2])
                continue  # nothing was counted either
            if counted is not None:  # counted once: a claim sent again after a refill is not (a
                hits, counted = tuple(int(hit) for hit in reply[4:]), None  # refill: it was under)
            home = home_bucket(attempt.user_id, buckets)
            if reply[0] == Outcome.SOLD_OUT and buckets > 1:  # noqa: SIM102 (a yield from in a condition)
                if (yield from self._refill(deal, home, buckets)):
                    refills += 1
                    if refills > REFILLS_PER_CLAIM:
                        moving = f"deal {deal}: its last units are moving between buckets"
                        raise GateUnavailable(moving, self.retry_after)
                    continue
            return _decision(attempt, reply, hits)

    def _refill(self, deal: str, home: int, buckets: int) -> Generator[Call, Any, bool]:
        """Move stock into the empty ``home`` bucket: half of the first other bucket that has
        some. Moves found half done in a journal (their mover died) are finished on the way,
        the home bucket's own last. False when the deal is sold out for sure
        (``_surely_sold_out``; remembered for a second, so a flood of refused claims does not
        sweep every bucket each time)."""
        now = self._clock()
        if self._sold_out_until.get(deal, 0.0) > now:
            return False
        found = False
        for offset in range(1, buckets + 1):
            donor = bucket_tag(deal, (home + offset) % buckets)
            move_id = uuid.uuid4().hex
            taken, *journal = yield ("move", self._move_keys(donor), [move_id, home])
            for index in range(0, len(journal), 2):
                units, to = (int(part) for part in journal[index + 1].split())
                yield from self._finish_move(donor, journal[index], bucket_tag(deal, to), units)
                found = True
            if int(taken):
                yield from self._finish_move(donor, move_id, bucket_tag(deal, home), int(taken))
                return True
        if found or not (yield from self._surely_sold_out(deal, buckets)):
            return True  # units moved, or may have moved behind the sweep: claim again
        self._sold_out_until[deal] = now + 1.0
        return False

    def _surely_sold_out(self, deal: str, buckets: int) -> Generator[Call, Any, bool]:
        """True when two censuses of every bucket, one after the other, find each bucket empty
        with nothing on its way out, and nothing credited to it between its two censuses.

        One sweep is not enough: it reads the buckets one after the other, and units can move
        behind it, from a bucket it has yet to read into one it has read. But a bucket gains
        units only by a credit, so a bucket found empty twice with no credit in between was
        empty all the while; every bucket's while holds the moment between the two censuses,
        when every bucket was empty at once and nothing was moving: every unit was sold."""
        censuses: list[list[int]] = [[], []]
        for census in censuses:
            for bucket in range(buckets):
                tag = bucket_tag(deal, bucket)
                census_keys = [*self._move_keys(tag), self._credit_keys(tag)[1]]
                stock, moving, credited = yield ("census", census_keys, [])
                if int(stock) > 0 or int(moving):
                    return False
                census.append(int(credited))
        return censuses[0] == censuses[1]

    def _finish_move(self, donor: str, move_id: str, home: str, units: int) -> Generator[Call, Any, None]:
        yield ("credit", self._credit_keys(home), [move_id, units])
        yield ("settle", self._move_keys(donor)[1:], [move_id])

    def stock_left(self, deal_id: str) -> int | None:
        with self._mapped_errors():
            buckets = self._held_buckets(deal_id)
            if buckets is None:
                return None
            tags = [bucket_tag(deal_id, bucket) for bucket in range(buckets)]
            pipe = self._client.pipeline(transaction=False)
            for tag in tags:
                pipe.hexists(self.deal_keys(tag)[0], KNOWN_FIELD)
                pipe.get(self.deal_keys(tag)[1])
                pipe.hgetall(self._move_keys(tag)[1])
            replies = pipe.execute()
            if not replies[0]:
                return None  # lost since this process cached its buckets
            left = sum(int(stock or 0) for stock in replies[1::3])
            moving = [(move, entry.split()) for journal in replies[2::3] for move, entry in journal.items()]
            if moving:  # units on their way count once: in the journal until credited
                pipe = self._client.pipeline(transaction=False)
                for move_id, (_, to) in moving:
                    pipe.sismember(self._credit_keys(bucket_tag(deal_id, int(to)))[1], move_id)
                credited = pipe.execute()
                pending = zip(moving, credited, strict=True)
                left += sum(int(units) for (_, (units, _)), done in pending if not done)
        return left

    def cancel(self, deal_id: str) -> None:
        with self._mapped_errors():
            buckets = self._held_buckets(deal_id)
            for bucket in range(buckets or 0):
                self._client.hset(self.deal_keys(bucket_tag(deal_id, bucket))[0], "cancelled", "1")

    def check(self) -> None:
        check_claim_step(self)
        self._check_eviction_policy()

    def _check_eviction_policy(self) -> None:
        """``GateUnavailable`` unless Redis runs with ``maxmemory-policy noeviction``: evicting a
        deal's users or claims hash would silently reset its per-user limits and replays. A
        Redis that refuses ``CONFIG GET`` (a managed service, an ACL) cannot be asked: passed."""
        with self._mapped_errors():
            try:
                config = self._client.config_get("maxmemory-policy")
            except redis.ResponseError:  # unknown or renamed command, NOPERM
                return
        policy = config.get("maxmemory-policy")
        if policy is not None and policy != "noeviction":
            raise GateUnavailable(
                f"Redis maxmemory-policy is {policy}; the claim gate needs noeviction "
                "(an evicted key would silently reset a deal's limits and replays)",
                self.retry_after,
            )
