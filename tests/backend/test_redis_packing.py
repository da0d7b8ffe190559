"""The gate's pipelines are packed by hiredis in one call per command: the bytes redis-py sends."""

from __future__ import annotations

import redis.asyncio

from shopcardd_backend.gates.redis_client import _packing_with_hiredis

CLAIM_CALL = (
    "EVALSHA",
    "a" * 40,
    7,
    *(f"shop:deal:{{d\u00e9al-1}}:{part}" for part in ("terms", "stock", "users", "claims", "outbox")),
    "shop:rate:1796647380:a:2001:db8::/64",
    "shop:rate:1796647380:u:alice",
    "alice",
    "5:alicek-1",
    "k-1",
    "v123",
    1_796_647_394,
    "",
    "+44 20 7946 0000",
    1,
    0,
    120,
    10**9,
)


def test_a_pipeline_is_packed_to_the_bytes_redis_py_packs() -> None:
    client = _packing_with_hiredis(redis.asyncio.Redis.from_url("redis://127.0.0.1:1"))
    ours = client.connection_pool.make_connection()
    theirs = redis.asyncio.Connection()
    commands = [CLAIM_CALL, ("EVALSHA", "b" * 40, 1, "k", -5, 2.5), ("SCRIPT LOAD", "return 1")]
    for batch in (commands[:1], commands[:2], commands):  # the last: a two-word name, redis-py's way
        assert b"".join(ours.pack_commands(batch)) == b"".join(theirs.pack_commands(batch))


def test_a_tls_url_keeps_its_tls_connection() -> None:
    client = _packing_with_hiredis(redis.asyncio.Redis.from_url("rediss://127.0.0.1:1"))
    assert issubclass(client.connection_pool.connection_class, redis.asyncio.SSLConnection)
