"""The Redis connection the claim gate's three adapters share: clients, keys, scripts, errors.

``RedisClaimGate`` (``redis.py``) is one object over one Redis: the claim gate, its outbox
(``redis_outbox.py``) and the rate counters (``redis_rates.py``), each a class on this one, so
that a claim and its outbox entry stay one script. Key layout, every key of a deal under the
hash tag ``{deal_id}`` so that the claim script touches one cluster slot (``deal_keys``)::

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

Every step is a Lua script registered as a redis-py ``Script``: after a Redis restart empties the
script cache, the NOSCRIPT answer makes redis-py load it again, and the gate's ``check()`` runs
the claim script, so a readiness probe fails when the step cannot run. Sockets time out quickly
and redis-py's own retries are off: an outage is a prompt ``GateUnavailable``, and a claim is
never half-applied (a script runs whole or not at all). The API's event loop sends the script
calls of every claim in flight together (``_Pipeliner``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final
from urllib.parse import urlsplit

import hiredis
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..settings import redis_node_urls
from ..storage import Closing
from .base import GateUnavailable

KEY_PARTS = ("terms", "stock", "users", "claims", "outbox")
"""The keys of a deal, in the order the script receives them as KEYS."""
RELAY_GROUP = "relay"
TOUCH_SECONDS = 1.0
"""A writer touches a deal in the active index at most this often (per process)."""
TOUCH = "redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])"
"""The touch of the active index as a script, so that the claim's steps are all script calls."""
KNOWN_FIELD = "merchant_id"
"""The terms field whose presence makes a deal known, here as in the script: a terms hash
without it (a ``cancelled`` flag written just as Redis lost the deal) is a lost deal."""
PER_KEY: Final = frozenset({"count"})
"""Scripts whose KEYS each live in a slot of their own (the rate counters): on a cluster, one
call per key."""


AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
ClusterClient = redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster
Call = tuple[str, list[str], list[Any]]
"""One step of a claim: the name of a script (``_script_sources``), its KEYS and its ARGV."""


def bucket_tag(deal_id: str, bucket: int) -> str:
    """The hash tag of a deal's bucket: the deal id for bucket 0 (an unbucketed deal's keys are
    unchanged), ``deal/N`` for the others (a deal id never holds a ``/``)."""
    return f"{deal_id}/{bucket}" if bucket else deal_id


def deal_of(tag: str) -> str:
    return tag.partition("/")[0]


def cluster_client(url: str, *, asynchronous: bool = False, **options: Any) -> ClusterClient:
    """redis-py's cluster client, sync or asyncio, of ``SHOPCARDD_REDIS_URL``: one node's URL or a
    comma-separated list of several. It starts from any node of the list that answers, so one
    node down (a primary just killed) does not stop a process from starting; the password, TLS
    and other options are the first URL's (``from_url``), the other nodes its ``startup_nodes``."""
    module = redis.asyncio.cluster if asynchronous else redis.cluster
    first, *others = redis_node_urls(url)
    nodes = [module.ClusterNode(node.hostname, node.port or 6379) for node in map(urlsplit, others)]
    client: ClusterClient = module.RedisCluster.from_url(first, startup_nodes=nodes, **options)
    return client


class _Pipeliner:
    """Script calls of many claims in one round trip: each call joins the batch of this turn of
    the event loop, and the batch goes out as one pipeline (EVALSHA each; a script Redis lost
    is loaded and its calls sent again). A claim then pays a share of one write, one read and
    one connection checkout instead of its own, and Redis answers many with one write too. On a
    cluster, redis-py's cluster pipeline sends each node its share and follows MOVED."""

    def __init__(self, client: AsyncClient, timeout: float, sources: dict[str, str]) -> None:
        self.client, self.timeout = client, timeout
        self.sources = sources
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


class _HiredisPacking:
    """A connection that packs a pipeline's commands with hiredis, one C call each: redis-py
    encodes every argument in Python first, 15 us a claim's script call against 2 us (the
    same bytes). A command whose name is two words, or with an argument hiredis refuses, is
    packed by redis-py as before."""

    def pack_commands(self, commands: Iterable[Sequence[Any]]) -> list[bytes]:
        commands = list(commands)
        try:
            if not any(" " in str(command[0]) for command in commands):
                return [b"".join([hiredis.pack_command(tuple(command)) for command in commands])]
        except TypeError:
            pass
        return super().pack_commands(commands)  # type: ignore[misc]


def _packing_with_hiredis(client: redis.asyncio.Redis) -> redis.asyncio.Redis:
    """``client`` whose new connections pack pipelines with ``_HiredisPacking``: a mixin over the
    connection class ``from_url`` chose (TCP, TLS or a Unix socket)."""
    pool = client.connection_pool
    base = pool.connection_class
    pool.connection_class = type(f"HiredisPacking{base.__name__}", (_HiredisPacking, base), {})
    return client


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError)


class RedisConnection(Closing):
    """What the Redis adapters share: the clients, the key names, the scripts, the error mapping
    and the deals' bucket counts. ``prefix`` namespaces every key."""

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
            self._client = cluster_client(url, **self._client_options)
        elif len(redis_node_urls(url)) > 1:
            raise ValueError("a list of node URLs is a Redis Cluster's: pass cluster=True")
        else:
            self._client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **self._client_options)
        self.buckets = buckets
        self._buckets: dict[str, int] = {}
        """Bucket counts of the deals this process has seen (fixed once a deal is loaded)."""
        self._scripts = {
            name: self._client.register_script(source) for name, source in self._script_sources().items()
        }
        self._async_client: Any = None
        self._async_run: Callable[[str, list[str], list[Any]], Awaitable[Any]]

    def _script_sources(self) -> dict[str, str]:
        """Every script the adapter runs, by name; each adapter class adds its own."""
        return {"touch": TOUCH}

    def deal_keys(self, deal_id: str) -> list[str]:
        """Every key of the deal (the script's KEYS), all in the deal's cluster slot; for a
        bucket, ``deal_id`` is its tag (``bucket_tag``)."""
        if not deal_id:
            raise ValueError("deal_id must not be empty: an empty hash tag spreads keys over slots")
        return [f"{self.prefix}:deal:{{{deal_id}}}:{part}" for part in KEY_PARTS]

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

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if name in PER_KEY and self._cluster:  # each key in a slot of its own: a call each
            return [self._scripts[name](keys=[key], args=args)[0] for key in keys]
        return self._scripts[name](keys=keys, args=args)

    def _async_parts(self) -> Callable[[str, list[str], list[Any]], Awaitable[Any]]:
        """How ``claim_async`` and ``count_async`` run a script, made on first use: in the event
        loop that uses it, and never in a relay or a command, which only call the sync methods.
        Through a ``_Pipeliner``, on one Redis and on a cluster alike (whose pipeline splits by
        node)."""
        if self._async_client is None:
            options = {**self._client_options, "socket_timeout": None}  # the pipeliner's timeout
            if self._cluster:
                self._async_client = cluster_client(self._url, asynchronous=True, **options)
            else:
                self._async_client = _packing_with_hiredis(
                    redis.asyncio.Redis.from_url(self._url, retry=AsyncRetry(NoBackoff(), 0), **options)
                )
            timeout = self._client_options["socket_timeout"]
            pipeliner = _Pipeliner(self._async_client, timeout, self._script_sources())
            self._async_run = pipeliner.call
            if self._cluster:

                async def run(name: str, keys: list[str], args: list[Any]) -> Any:
                    if name in PER_KEY:  # each key in a slot of its own: a call each
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

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.aclose()

    def close(self) -> None:
        self._closed = True
        self._client.close()
