"""The scaled claim gate: one Lua script (``claim.lua``) decides a claim and writes its event.

Key layout, every key of a deal under the hash tag ``{deal_id}`` so that the script touches
one cluster slot (``deal_keys``)::

    PREFIX:deal:{D}:terms    hash: merchant_id, per_user_limit, voucher_ttl_seconds,
                             starts_at, ends_at ("" = open-ended), cancelled
    PREFIX:deal:{D}:stock    vouchers left
    PREFIX:deal:{D}:users    hash: user_id -> vouchers issued
    PREFIX:deal:{D}:claims   hash: (user, idempotency key) -> "issued_at expires_at voucher_id"
    PREFIX:deal:{D}:outbox   stream: one entry per issued claim (and per refusal tally);
                             consumer group ``relay``
    PREFIX:outbox-active     sorted set: deal id -> when a writer last touched its outbox
    PREFIX:rate:W:NAME       a claim rate limit's hits in the window starting at W: a key of its
                             own, in its own slot; counted by the claim script on one Redis (a
                             claim's ``rate_count``), by a call of its own on a cluster

The outbox is one stream per deal (a single stream would put every deal in one slot). Relays
read only the deals in ``PREFIX:outbox-active``, never every deal ever created. That index
lives in another slot than the deal, so the claim script cannot write it; instead every writer
touches it (``ZADD``, at most once a second per deal and process) *before* it may append to a
deal's stream, and a relay removes a deal only when its stream is empty and nobody has touched
it for ``IDLE_SECONDS``, with a script that refuses if a touch came in between. So a deal with
an event in its stream is always in the index.

Relays share the streams through the consumer group ``relay``: ``XREADGROUP`` hands each new
entry to one relay, ``XAUTOCLAIM`` takes over the entries a dead relay had leased, and an entry
is acknowledged and deleted (``XACK``, ``XDEL``) once RabbitMQ confirmed it. An event id is
``<stream entry id>-<deal_id>``; events are ordered by entry id, then deal.

The script is registered as a redis-py ``Script``: after a Redis restart empties the script
cache, the NOSCRIPT answer makes redis-py load it again, and ``check()`` runs it, so a
readiness probe fails when the step cannot run. Sockets time out quickly and redis-py's own
retries are off: an outage is a prompt ``GateUnavailable``, and a claim is never half-applied
(a script runs whole or not at all). A timeout after the script was sent leaves the claim
either applied or not; the client's retry with the same idempotency key answers either way.

Buckets (hot deals): a deal of N buckets has N such key sets, bucket i > 0 under the tag
``{D/i}``, each with a share of the stock; a user's claims all live in their home bucket, and
an empty bucket takes stock from the others through a journaled move (``MOVE``, ``CREDIT``).
See docs/backend-storage.md, "Buckets". With ``cluster=True`` the same runs on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from importlib.resources import files
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from shopcardd_voucher import Voucher

from ..storage import Closing
from .base import (
    ClaimAttempt,
    ClaimDecision,
    DealTerms,
    GateUnavailable,
    OutboxEvent,
    Outcome,
    RateCount,
    check_claim_step,
    claim_event_payload,
    count_apart,
)

KEY_PARTS = ("terms", "stock", "users", "claims", "outbox")
"""The keys of a deal, in the order the script receives them as KEYS."""
RELAY_GROUP = "relay"
TOUCH_SECONDS = 1.0
"""A writer touches a deal in the active index at most this often (per process)."""
IDLE_SECONDS = 60.0
"""A relay drops a deal from the active index once its stream is empty and untouched this long.
Far longer than ``TOUCH_SECONDS``, so the clocks of writers and relays may differ by most of it."""
FORGET_IDLE_DEAL = """
local touched = redis.call('ZSCORE', KEYS[1], ARGV[1])
if touched and tonumber(touched) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""
TOUCH = "redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])"
"""The touch of the active index as a script, so that the claim's steps are all script calls."""
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
COUNT = """
local hits = {}
for i, key in ipairs(KEYS) do
  hits[i] = redis.call('INCR', key)
  if hits[i] == 1 then
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return hits
"""
"""One hit of each rate limit window counter named (KEYS: the counters; ARGV: seconds they live)."""
KNOWN_FIELD = "merchant_id"
"""The terms field whose presence makes a deal known, here as in the script: a terms hash
without it (a ``cancelled`` flag written just as Redis lost the deal) is a lost deal."""


@cache
def claim_script_source() -> str:
    return files(__package__).joinpath("claim.lua").read_text(encoding="utf-8")


def _claim_field(user_id: str, idempotency_key: str) -> str:
    """The claims-hash field of a user's key; the length prefix keeps ("a", "bc") != ("ab", "c")."""
    return f"{len(user_id)}:{user_id}{idempotency_key}"


def _record(voucher: Voucher) -> str:
    return f"{voucher.issued_at} {voucher.expires_at} {voucher.voucher_id}"


AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
Call = tuple[str, list[str], list[Any]]
"""One step of a claim: the name of a script (``_scripts``), its KEYS and its ARGV."""


def _scripts() -> dict[str, str]:
    return {
        "claim": claim_script_source(),
        "touch": TOUCH,
        "move": MOVE,
        "credit": CREDIT,
        "settle": SETTLE,
        "census": CENSUS,
        "count": COUNT,
    }


def bucket_tag(deal_id: str, bucket: int) -> str:
    """The hash tag of a deal's bucket: the deal id for bucket 0 (an unbucketed deal's keys are
    unchanged), ``deal/N`` for the others (a deal id never holds a ``/``)."""
    return f"{deal_id}/{bucket}" if bucket else deal_id


def deal_of(tag: str) -> str:
    return tag.partition("/")[0]


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


def _event_sort_key(event_id: str) -> tuple[int, int, str]:
    ms, seq, deal_id = event_id.split("-", 2)
    return int(ms), int(seq), deal_id


class _Pipeliner:
    """Script calls of many claims in one round trip: each call joins the batch of this turn of
    the event loop, and the batch goes out as one pipeline (EVALSHA each; a script Redis lost
    is loaded and its calls sent again). A claim then pays a share of one write, one read and
    one connection checkout instead of its own, and Redis answers many with one write too. On a
    cluster, redis-py's cluster pipeline sends each node its share and follows MOVED."""

    def __init__(self, client: AsyncClient, timeout: float) -> None:
        self.client, self.timeout = client, timeout
        self.sources = _scripts()
        self.shas = {name: hashlib.sha1(code.encode()).hexdigest() for name, code in self.sources.items()}
        self.batch: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def call(self, name: str, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if not self.batch:
            loop.call_soon(self._flush)
        future = loop.create_future()
        self.batch.append((name, keys, args, future))
        return future

    def _flush(self) -> None:
        batch, self.batch = self.batch, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self.tasks.add(task)  # held until done: a task nobody holds may be collected
        task.add_done_callback(self.tasks.discard)

    async def _send(self, batch: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                replies = await self._execute(batch)
                lost = [item for item, reply in zip(batch, replies, strict=True) if _is_noscript(reply)]
                if lost:  # Redis restarted and forgot the scripts: load them, send those again
                    for name in {name for name, *_ in lost}:
                        await self.client.script_load(self.sources[name])
                    again = iter(await self._execute(lost))
                    replies = [next(again) if _is_noscript(reply) else reply for reply in replies]
        except Exception as exc:  # the connection, the deadline: every claim of the batch hears it
            replies = [exc] * len(batch)
        for (*_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its claim gave up (its own deadline)
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, batch: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for name, keys, args, _ in batch:
            pipe.execute_command("EVALSHA", self.shas[name], len(keys), *keys, *args)  # (a cluster
            # pipeline refuses its evalsha method, not the command: each call names its own keys)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError)


class RedisClaimGate(Closing):
    """``ClaimGate`` on Redis (or Redis Cluster's layout); ``prefix`` namespaces every key."""

    def __init__(
        self,
        url: str,
        prefix: str = "shopcardd",
        *,
        cluster: bool = False,
        buckets: int = 1,
        socket_timeout: float = 1.0,
        connect_timeout: float = 0.5,
        retry_after: int = 1,
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError("prefix must be non-empty and free of braces (they would move the hash tag)")
        self.prefix = prefix
        self.active_key = f"{prefix}:outbox-active"
        self.retry_after = retry_after
        self._closed = False
        self._touched: dict[str, float] = {}
        self._clock: Callable[[], float] = time.time
        self._client_options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "decode_responses": True,
        }
        self._url = url
        self._cluster = cluster
        self._client: Any
        if cluster:
            # Redis Cluster: the client follows MOVED and a failover (it refreshes the slot map
            # and retries a few times); a claim retried that way at worst answers REPLAYED.
            self._client = redis.cluster.RedisCluster.from_url(url, **self._client_options)
        else:
            self._client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **self._client_options)
        self.buckets = buckets
        self._buckets: dict[str, int] = {}
        """Bucket counts of the deals this process has seen (fixed once a deal is loaded)."""
        self._sold_out_until: dict[str, float] = {}
        self._scripts = {name: self._client.register_script(source) for name, source in _scripts().items()}
        self._async_client: Any = None
        self._async_run: Callable[[str, list[str], list[Any]], Awaitable[Any]]
        self._forget_idle_deal = self._client.register_script(FORGET_IDLE_DEAL)
        self._lease_start = 0

    def deal_keys(self, deal_id: str) -> list[str]:
        """Every key of the deal (the script's KEYS), all in the deal's cluster slot; for a
        bucket, ``deal_id`` is its tag (``bucket_tag``)."""
        if not deal_id:
            raise ValueError("deal_id must not be empty: an empty hash tag spreads keys over slots")
        return [f"{self.prefix}:deal:{{{deal_id}}}:{part}" for part in KEY_PARTS]

    def _move_keys(self, tag: str) -> list[str]:
        """A bucket's stock and its journal of moves out (the MOVE script's KEYS)."""
        return [self.deal_keys(tag)[1], f"{self.prefix}:deal:{{{tag}}}:moves"]

    def _credit_keys(self, tag: str) -> list[str]:
        """A bucket's stock and the set of moves credited to it (the CREDIT script's KEYS)."""
        return [self.deal_keys(tag)[1], f"{self.prefix}:deal:{{{tag}}}:credited"]

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        if self._closed:
            raise GateUnavailable("the Redis claim gate is closed", self.retry_after)
        try:
            yield
        except (redis.RedisError, redis.exceptions.RedisClusterException, TimeoutError) as exc:
            # Connection refused or reset, timeouts, LOADING, READONLY during a failover, a
            # script Redis cannot run: the gate cannot decide now; nothing was half-applied.
            raise GateUnavailable(f"Redis: {exc}", self.retry_after) from exc

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

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if name == "count" and self._cluster:  # each counter in a slot of its own: a call each
            return [self._scripts[name](keys=[key], args=args)[0] for key in keys]
        return self._scripts[name](keys=keys, args=args)

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

    async def count_async(self, names: Sequence[str], window_start: int, window_seconds: int) -> list[int]:
        """One ``COUNT`` call joining this turn's pipeline (a claim's counters go out in the same
        round trips as the other claims in flight); on a cluster, one per counter."""
        run, call = self._async_parts(), self._count_call(names, window_start, window_seconds)
        with self._mapped_errors():
            return [int(hits) for hits in await run(*call)]

    def _count_call(self, names: Sequence[str], window_start: int, window_seconds: int) -> Call:
        """The COUNT script's call for these counters; they live twice the window (a clock
        behind by most of one still finds its counter)."""
        keys = [f"{self.prefix}:rate:{window_start}:{name}" for name in names]
        return "count", keys, [2 * window_seconds]

    def _counting(self, counted: RateCount) -> Call:
        return self._count_call(counted.names, counted.window_start, counted.window_seconds)

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

    def _async_parts(self) -> Callable[[str, list[str], list[Any]], Awaitable[Any]]:
        """How ``claim_async`` runs a script, made on first use: in the event loop that uses it,
        and never in a relay or a command, which only call the sync methods. Through a
        ``_Pipeliner``, on one Redis and on a cluster alike (whose pipeline splits by node)."""
        if self._async_client is None:
            options = {**self._client_options, "socket_timeout": None}  # the pipeliner's timeout
            if self._cluster:
                cluster_client = redis.asyncio.cluster.RedisCluster
                self._async_client = cluster_client.from_url(self._url, **options)
            else:
                self._async_client = redis.asyncio.Redis.from_url(
                    self._url, retry=AsyncRetry(NoBackoff(), 0), **options
                )
            pipeliner = _Pipeliner(self._async_client, self._client_options["socket_timeout"])
            self._async_run = pipeliner.call
            if self._cluster:

                async def run(name: str, keys: list[str], args: list[Any]) -> Any:
                    if name == "count":  # each counter in a slot of its own: a call each
                        replies = await asyncio.gather(*(pipeliner.call(name, [key], args) for key in keys))
                        return [hits for [hits] in replies]
                    return await pipeliner.call(name, keys, args)

                self._async_run = run
        return self._async_run

    def _held_buckets(self, deal_id: str) -> int | None:
        """The bucket count of a deal the gate holds (None: not held); cached, it never changes."""
        if deal_id not in self._buckets:
            held = self._client.hmget(self.deal_keys(deal_id)[0], [KNOWN_FIELD, "buckets"])
            if held[0] is None:
                return None
            self._buckets[deal_id] = int(held[1] or 1)
        return self._buckets[deal_id]

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

    def _touch(self, deal_id: str, force: bool = False) -> None:
        """Mark the deal's outbox active before a write may append to it (see the module's doc)."""
        now = self._clock()
        if force or self._touch_due(deal_id, now):
            self._client.zadd(self.active_key, {deal_id: now})
            self._touched[deal_id] = now

    def _touch_due(self, deal_id: str, now: float) -> bool:
        """Whether this process last touched the deal a ``TOUCH_SECONDS`` ago or more. The caller
        records the touch only once its ``ZADD`` succeeded."""
        if len(self._touched) > 100_000:  # a process that saw very many deals forgets old ones
            self._touched = {d: t for d, t in self._touched.items() if now - t < TOUCH_SECONDS}
        return now - self._touched.get(deal_id, -TOUCH_SECONDS) >= TOUCH_SECONDS

    def _create_group(self, stream_key: str) -> None:
        try:
            self._client.xgroup_create(stream_key, RELAY_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_outbox(
        self, after: str | None = None, limit: int | None = 100, deal_id: str | None = None
    ) -> Sequence[OutboxEvent]:
        with self._mapped_errors():
            if deal_id is not None:  # the deal's buckets' streams (bucket 0 alone when unbucketed)
                deals = [bucket_tag(deal_id, bucket) for bucket in range(self._held_buckets(deal_id) or 1)]
            else:
                deals = sorted(self._client.zrange(self.active_key, 0, -1))
            if not deals:
                return []
            after_key = None if after is None else _event_sort_key(after)
            pipe = self._client.pipeline(transaction=False)
            for deal in deals:
                start = "-"
                if after_key is not None:
                    ms, seq, after_deal = after_key
                    start = f"{ms}-{seq}" if deal > after_deal else f"({ms}-{seq}"
                pipe.xrange(self.deal_keys(deal)[-1], min=start, count=limit)
            streams: list[list[tuple[str, dict[str, Any]]]] = pipe.execute()
        events = [
            OutboxEvent(f"{entry_id}-{deal}", self._payload(deal, fields))
            for deal, entries in zip(deals, streams, strict=True)
            for entry_id, fields in entries
        ]
        events.sort(key=lambda event: _event_sort_key(event.event_id))
        return events if limit is None else events[:limit]

    def lease_outbox(self, consumer: str, limit: int = 100, lease_seconds: float = 30.0) -> list[OutboxEvent]:
        with self._mapped_errors():
            deals = self._client.zrange(self.active_key, 0, -1, withscores=True)
            if not deals:
                return []
            self._lease_start = (self._lease_start + 1) % len(deals)  # every deal gets its turn first
            deals = deals[self._lease_start :] + deals[: self._lease_start]
            events: list[OutboxEvent] = []
            for chunk_start in range(0, len(deals), 32):
                chunk = deals[chunk_start : chunk_start + 32]
                events += self._lease_chunk(chunk, consumer, limit, int(lease_seconds * 1000))
                if len(events) >= limit:
                    break
        return events

    def _lease_chunk(
        self, deals: list[tuple[str, float]], consumer: str, limit: int, lease_ms: int
    ) -> list[OutboxEvent]:
        """One round trip for the stale and the new entries of ``deals``; idle deals forgotten."""
        pipe = self._client.pipeline(transaction=False)
        for deal_id, _ in deals:
            stream = self.deal_keys(deal_id)[-1]
            pipe.xautoclaim(stream, RELAY_GROUP, consumer, lease_ms, "0-0", count=limit)
            pipe.xreadgroup(RELAY_GROUP, consumer, {stream: ">"}, count=limit)
            pipe.xlen(stream)
        replies = pipe.execute(raise_on_error=False)
        events: list[OutboxEvent] = []
        idle_before = self._clock() - IDLE_SECONDS
        for index, (deal_id, touched) in enumerate(deals):
            stale, new, length = replies[3 * index : 3 * index + 3]
            if isinstance(stale, redis.ResponseError) and "NOGROUP" in str(stale):
                self._create_group(self.deal_keys(deal_id)[-1])  # a stream written before its group
                continue
            for reply in (stale, new, length):
                if isinstance(reply, Exception):
                    raise reply
            entries = [*stale[1], *(new[0][1] if new else [])]
            events += [
                OutboxEvent(f"{entry_id}-{deal_id}", self._payload(deal_id, fields))
                for entry_id, fields in entries
                if fields  # an entry deleted while leased comes back empty: nothing to relay
            ]
            if not entries and length == 0 and touched <= idle_before:
                self._forget_idle_deal(keys=[self.active_key], args=[deal_id, idle_before])
        return events

    @staticmethod
    def _payload(tag: str, fields: dict[str, str]) -> dict[str, Any]:
        """The event of a stream entry of the deal's bucket ``tag``."""
        if "payload" in fields:  # written by add_event
            payload: dict[str, Any] = json.loads(fields["payload"])
            return payload
        deal_id = deal_of(tag)
        voucher = Voucher(
            fields["voucher_id"],
            deal_id,
            fields["user_id"],
            fields["merchant_id"],
            int(fields["issued_at"]),
            int(fields["expires_at"]),
        )
        attempt = ClaimAttempt(
            deal_id,
            fields["user_id"],
            fields["idempotency_key"],
            fields["voucher_id"],
            int(fields["issued_at"]),
            fields.get("email"),
            fields.get("phone"),
        )
        return claim_event_payload(voucher, attempt)

    def ack_outbox(self, event_ids: Iterable[str]) -> None:
        by_deal: dict[str, list[str]] = {}
        for event_id in event_ids:
            ms, seq, deal_id = _event_sort_key(event_id)
            by_deal.setdefault(deal_id, []).append(f"{ms}-{seq}")
        if not by_deal:
            return
        with self._mapped_errors():
            pipe = self._client.pipeline(transaction=False)
            for deal_id, entry_ids in by_deal.items():
                stream = self.deal_keys(deal_id)[-1]
                pipe.xack(stream, RELAY_GROUP, *entry_ids)
                pipe.xdel(stream, *entry_ids)
            pipe.execute(raise_on_error=False)  # a stream without its group still deletes

    def add_event(self, deal_id: str, payload: dict[str, Any]) -> None:
        with self._mapped_errors():
            self._touch(deal_id)
            self._client.xadd(self.deal_keys(deal_id)[-1], {"payload": json.dumps(payload)})

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

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.aclose()

    def close(self) -> None:
        self._closed = True
        self._client.close()
