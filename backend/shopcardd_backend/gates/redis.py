"""The scaled claim gate: one Lua script (``claim.lua``) decides a claim and writes its event.

Key layout, every key of a deal under the hash tag ``{deal_id}`` so that the script touches
one cluster slot (``deal_keys``)::

    PREFIX:deal:{D}:terms    hash: merchant_id, per_user_limit, voucher_ttl_seconds,
                             starts_at, ends_at ("" = open-ended), cancelled
    PREFIX:deal:{D}:stock    vouchers left
    PREFIX:deal:{D}:users    hash: user_id -> vouchers issued
    PREFIX:deal:{D}:claims   hash: (user, idempotency key) -> "issued_at expires_at voucher_id"
    PREFIX:deal:{D}:outbox   stream: one entry per issued claim
    PREFIX:outbox-deals      set of deal ids (written by load_deal, outside the script)

The outbox is one stream per deal (a single stream would put every deal in one slot), so
``read_outbox`` merges the streams of the deals in ``PREFIX:outbox-deals``. An event id is
``<stream entry id>-<deal_id>``; events are ordered by entry id, then deal.

The script is registered as a redis-py ``Script``: after a Redis restart empties the script
cache, the NOSCRIPT answer makes redis-py load it again, and ``check()`` runs it, so a
readiness probe fails when the step cannot run. Sockets time out quickly and redis-py's own
retries are off: an outage is a prompt ``GateUnavailable``, and a claim is never half-applied
(a script runs whole or not at all). A timeout after the script was sent leaves the claim
either applied or not; the client's retry with the same idempotency key answers either way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from importlib.resources import files
from typing import Any

import redis
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
        self.registry_key = f"{prefix}:outbox-deals"
        self.retry_after = retry_after
        self._closed = False
        self._client: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._claim_script = self._client.register_script(_claim_script_source())

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
            self._client.sadd(self.registry_key, terms.deal_id)
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
        args = [
            attempt.user_id,
            _claim_field(attempt.user_id, attempt.idempotency_key),
            attempt.idempotency_key,
            attempt.voucher_id,
            attempt.now,
        ]
        with self._mapped_errors():
            outcome, record, stock_left, merchant_id = self._claim_script(
                keys=self.deal_keys(attempt.deal_id), args=args
            )
        if outcome == Outcome.UNKNOWN_DEAL:
            return ClaimDecision(Outcome.UNKNOWN_DEAL)
        voucher = None
        if record:
            issued_at, expires_at, voucher_id = record.split(" ", 2)
            voucher = Voucher(
                voucher_id, attempt.deal_id, attempt.user_id, merchant_id, int(issued_at), int(expires_at)
            )
        return ClaimDecision(Outcome(outcome), voucher, stock_left)

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

    def read_outbox(self, after: str | None = None, limit: int = 100) -> Sequence[OutboxEvent]:
        with self._mapped_errors():
            deals = sorted(self._client.smembers(self.registry_key))
            if not deals:
                return []
            after_key = None if after is None else _event_sort_key(after)
            pipe = self._client.pipeline(transaction=False)
            for deal_id in deals:
                start = "-"
                if after_key is not None:
                    ms, seq, after_deal = after_key
                    start = f"{ms}-{seq}" if deal_id > after_deal else f"({ms}-{seq}"
                pipe.xrange(self.deal_keys(deal_id)[-1], min=start, count=limit)
            streams: list[list[tuple[str, dict[str, Any]]]] = pipe.execute()
        events = [
            OutboxEvent(f"{entry_id}-{deal_id}", self._payload(deal_id, fields))
            for deal_id, entries in zip(deals, streams, strict=True)
            for entry_id, fields in entries
        ]
        events.sort(key=lambda event: _event_sort_key(event.event_id))
        return events[:limit]

    @staticmethod
    def _payload(deal_id: str, fields: dict[str, str]) -> dict[str, Any]:
        voucher = Voucher(
            fields["voucher_id"],
            deal_id,
            fields["user_id"],
            fields["merchant_id"],
            int(fields["issued_at"]),
            int(fields["expires_at"]),
        )
        return claim_event_payload(voucher, fields["idempotency_key"])

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
                pipe.xdel(self.deal_keys(deal_id)[-1], *entry_ids)
            pipe.execute()

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

    def close(self) -> None:
        self._closed = True
        self._client.close()
