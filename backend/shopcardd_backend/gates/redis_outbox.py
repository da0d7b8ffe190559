"""The claim gate's outbox on Redis: one stream per deal, shared by the relays.

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

"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from ..events import ClaimIssued, event_payload
from .base import OutboxBacklog, OutboxEvent
from .redis_client import RELAY_GROUP, RedisConnection, bucket_tag, deal_of

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


def _event_sort_key(event_id: str) -> tuple[int, int, str]:
    ms, seq, deal_id = event_id.split("-", 2)
    return int(ms), int(seq), deal_id


class RedisOutbox(RedisConnection):
    """``Outbox`` on Redis: the claim script appends to a deal's stream, the relays lease from it."""

    _lease_start = 0
    """The deal a relay's next lease starts at, so that every deal gets its turn first."""

    def _script_sources(self) -> dict[str, str]:
        return {**super()._script_sources(), "forget_idle_deal": FORGET_IDLE_DEAL}

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

    def outbox_backlog(self) -> OutboxBacklog:
        # The streams of the active deals (a deal with an event is always there): each one's
        # length and first entry, whose id is the Redis clock's milliseconds when it was written.
        with self._mapped_errors():
            deals = self._client.zrange(self.active_key, 0, -1)
            if not deals:
                return OutboxBacklog(0, None)
            pipe = self._client.pipeline(transaction=False)
            for deal in deals:
                stream = self.deal_keys(deal)[-1]
                pipe.xlen(stream)
                pipe.xrange(stream, count=1)
            replies = pipe.execute()
        lengths, heads = replies[0::2], replies[1::2]
        firsts = [int(head[0][0].split("-")[0]) / 1000 for head in heads if head]
        return OutboxBacklog(sum(lengths), min(firsts, default=None))

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
                self._scripts["forget_idle_deal"](keys=[self.active_key], args=[deal_id, idle_before])
        return events

    @staticmethod
    def _payload(tag: str, fields: dict[str, str]) -> dict[str, Any]:
        """The event of a stream entry of the deal's bucket ``tag``: the claim script writes the
        ``claim.issued`` event's fields, ``add_event`` a whole payload."""
        if "payload" in fields:  # written by add_event
            payload: dict[str, Any] = json.loads(fields["payload"])
            return payload
        issued = ClaimIssued(
            fields["voucher_id"],
            deal_of(tag),
            fields["merchant_id"],
            fields["user_id"],
            fields["idempotency_key"],
            int(fields["issued_at"]),
            int(fields["expires_at"]),
            fields.get("email"),
            fields.get("phone"),
        )
        return event_payload(issued)

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
