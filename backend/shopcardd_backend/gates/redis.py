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
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from importlib.resources import files
from typing import Any

import redis
import redis.asyncio
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
    check_claim_step,
    claim_event_payload,
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
KNOWN_FIELD = "merchant_id"
"""The terms field whose presence makes a deal known, here as in the script: a terms hash
without it (a ``cancelled`` flag written just as Redis lost the deal) is a lost deal."""


@cache
def _claim_script_source() -> str:
    return files(__package__).joinpath("claim.lua").read_text(encoding="utf-8")


def _claim_field(user_id: str, idempotency_key: str) -> str:
    """The claims-hash field of a user's key; the length prefix keeps ("a", "bc") != ("ab", "c")."""
    return f"{len(user_id)}:{user_id}{idempotency_key}"


def _record(voucher: Voucher) -> str:
    return f"{voucher.issued_at} {voucher.expires_at} {voucher.voucher_id}"


def _claim_args(attempt: ClaimAttempt) -> list[str | int]:
    """The script's ARGV for ``attempt`` (see ``claim.lua``)."""
    return [
        attempt.user_id,
        _claim_field(attempt.user_id, attempt.idempotency_key),
        attempt.idempotency_key,
        attempt.voucher_id,
        attempt.now,
        attempt.email or "",
        attempt.phone or "",
    ]


def _decision(attempt: ClaimAttempt, reply: list[Any]) -> ClaimDecision:
    """The script's reply ``{outcome, record, stock left, merchant}`` as the port's decision."""
    outcome, record, stock_left, merchant_id = reply
    if outcome == Outcome.UNKNOWN_DEAL:
        return ClaimDecision(Outcome.UNKNOWN_DEAL)
    voucher = None
    if record:
        issued_at, expires_at, voucher_id = record.split(" ", 2)
        voucher = Voucher(
            voucher_id, attempt.deal_id, attempt.user_id, merchant_id, int(issued_at), int(expires_at)
        )
    return ClaimDecision(Outcome(outcome), voucher, stock_left)


def _event_sort_key(event_id: str) -> tuple[int, int, str]:
    ms, seq, deal_id = event_id.split("-", 2)
    return int(ms), int(seq), deal_id


class RedisClaimGate(Closing):
    """``ClaimGate`` on Redis (or Redis Cluster's layout); ``prefix`` namespaces every key."""

    def __init__(
        self,
        url: str,
        prefix: str = "shopcardd",
        *,
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
        self._client: redis.Redis = redis.Redis.from_url(
            url, retry=Retry(NoBackoff(), 0), **self._client_options
        )
        self._claim_script = self._client.register_script(_claim_script_source())
        self._async_client: redis.asyncio.Redis | None = None
        self._forget_idle_deal = self._client.register_script(FORGET_IDLE_DEAL)
        self._lease_start = 0

    def deal_keys(self, deal_id: str) -> list[str]:
        """Every key of the deal (the script's KEYS), all in the deal's cluster slot."""
        if not deal_id:
            raise ValueError("deal_id must not be empty: an empty hash tag spreads keys over slots")
        return [f"{self.prefix}:deal:{{{deal_id}}}:{part}" for part in KEY_PARTS]

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        if self._closed:
            raise GateUnavailable("the Redis claim gate is closed", self.retry_after)
        try:
            yield
        except redis.RedisError as exc:
            # Connection refused or reset, timeouts, LOADING, READONLY during a failover, a
            # script Redis cannot run: the gate cannot decide now; nothing was half-applied.
            raise GateUnavailable(f"Redis: {exc}", self.retry_after) from exc

    def load_deal(self, terms: DealTerms, claimed: Iterable[tuple[str, Voucher]] = ()) -> None:
        terms_key, stock_key, users_key, claims_key, _ = self.deal_keys(terms.deal_id)
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
            self._touch(terms.deal_id, force=True)
            self._create_group(self.deal_keys(terms.deal_id)[-1])
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(terms_key, mapping=fields)
            if claimed:
                pipe.delete(users_key, claims_key)
                pipe.set(stock_key, max(terms.stock - len(claimed), 0))
                pipe.hset(users_key, mapping=Counter(voucher.user for _, voucher in claimed))
                pipe.hset(
                    claims_key,
                    mapping={_claim_field(v.user, key): _record(v) for key, v in claimed},
                )
            else:
                pipe.set(stock_key, terms.stock, nx=True)
            pipe.execute()

    def claim(self, attempt: ClaimAttempt) -> ClaimDecision:
        with self._mapped_errors():
            self._touch(attempt.deal_id)
            reply = self._claim_script(keys=self.deal_keys(attempt.deal_id), args=_claim_args(attempt))
        return _decision(attempt, reply)

    async def claim_async(self, attempt: ClaimAttempt) -> ClaimDecision:
        """The same script through redis.asyncio (hiredis parses the replies when installed)."""
        client, script = self._async_parts()
        with self._mapped_errors():
            now = self._clock()
            if self._touch_due(attempt.deal_id, now):
                await client.zadd(self.active_key, {attempt.deal_id: now})
                self._touched[attempt.deal_id] = now
            reply = await script(keys=self.deal_keys(attempt.deal_id), args=_claim_args(attempt))
        return _decision(attempt, reply)

    def _async_parts(self) -> tuple[redis.asyncio.Redis, Any]:
        """The asyncio client and its claim script, made on first use: in the event loop that
        uses them, and never in a relay or a command, which only call the sync methods."""
        if self._async_client is None:
            self._async_client = redis.asyncio.Redis.from_url(
                self._url, retry=AsyncRetry(NoBackoff(), 0), **self._client_options
            )
            self._async_claim_script = self._async_client.register_script(_claim_script_source())
        return self._async_client, self._async_claim_script

    def stock_left(self, deal_id: str) -> int | None:
        terms_key, stock_key, *_ = self.deal_keys(deal_id)
        with self._mapped_errors():
            pipe = self._client.pipeline(transaction=True)
            known, stock = pipe.hexists(terms_key, KNOWN_FIELD).get(stock_key).execute()
        return int(stock or 0) if known else None

    def cancel(self, deal_id: str) -> None:
        terms_key = self.deal_keys(deal_id)[0]
        with self._mapped_errors():
            if self._client.hexists(terms_key, KNOWN_FIELD):
                self._client.hset(terms_key, "cancelled", "1")

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
            deals = [deal_id] if deal_id is not None else sorted(self._client.zrange(self.active_key, 0, -1))
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
    def _payload(deal_id: str, fields: dict[str, str]) -> dict[str, Any]:
        if "payload" in fields:  # written by add_event
            payload: dict[str, Any] = json.loads(fields["payload"])
            return payload
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
