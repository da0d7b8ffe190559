"""Fixtures of the backend suites: claim gates and document stores of every kind, on the
machine's real services, each test on its own files, key prefix or database.

- ``gate`` / ``store``: parametrized over every adapter (``GATE_KINDS``, ``STORE_KINDS``), so
  a test written once runs against each. ``outbox`` and ``rate_counter`` are the same adapter
  as ``gate`` (``ports``), each handed over as the one port a test is about.
- ``make_gate(kind)`` / ``make_store(kind)``: factories for tests that need more than one
  (two gates on one SQLite file, a gate next to a store); each call gives a new gate on
  fresh storage unless ``path`` is passed. Everything made is closed, and its Redis keys or
  Mongo database removed, when the test ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shopcardd_backend.gates.base import ClaimGate, ClaimPorts, Outbox, RateCounter
from shopcardd_backend.stores.base import DocumentStore

GATE_KINDS = ["sqlite", "redis"]
EVERY_GATE_KIND = [*GATE_KINDS, "redis-buckets"]
"""``make_gate`` also makes ``redis-buckets``: the Redis gate splitting every deal's stock over
up to 3 buckets (hot deals); the gate's own suites (contract, concurrency) run it too."""
STORE_KINDS = ["sqlite", "mongo"]
_MARKS = {"redis": [pytest.mark.redis], "redis-buckets": [pytest.mark.redis], "mongo": [pytest.mark.mongo]}


def _kind_params(kinds: list[str]) -> list[Any]:
    """One fixture param per adapter kind, marked (``redis``, ``mongo``) when it needs a server."""
    return [pytest.param(kind, marks=_MARKS.get(kind, [])) for kind in kinds]


MakeGate = Callable[..., ClaimPorts]
MakeStore = Callable[..., DocumentStore]


@pytest.fixture
def make_gate(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeGate]:
    """``make_gate("sqlite", path=None)`` or ``make_gate("redis", prefix=None, url=None)``."""
    made: list[Any] = []
    prefixes: list[tuple[str, str]] = []

    def make(
        kind: str, *, path: Path | None = None, prefix: str | None = None, url: str | None = None
    ) -> Any:
        if kind == "sqlite":
            from shopcardd_backend.gates.sqlite import SqliteClaimGate

            gate: Any = SqliteClaimGate(path or tmp_path / f"gate-{len(made)}.sqlite3")
        elif kind in ("redis", "redis-buckets"):
            from shopcardd_backend.gates.redis import RedisClaimGate

            url = url or request.getfixturevalue("redis_url")
            prefix = prefix or f"{request.getfixturevalue('redis_prefix')}-{len(made)}"
            prefixes.append((url, prefix))
            gate = RedisClaimGate(url, prefix=prefix, buckets=3 if kind == "redis-buckets" else 1)
        else:
            raise ValueError(f"no gate of kind {kind!r}")
        made.append(gate)
        return gate

    yield make
    for gate in made:
        gate.close()
    for url, prefix in prefixes:
        _delete_redis_keys(url, prefix)


def _delete_redis_keys(url: str, prefix: str) -> None:
    import redis

    with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1) as client:
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
        except redis.ConnectionError:
            pass  # a test's own server that is gone: nothing left to clean


@pytest.fixture(params=_kind_params(GATE_KINDS))
def gate_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=_kind_params(EVERY_GATE_KIND))
def every_gate_kind(request: pytest.FixtureRequest) -> str:
    """``EVERY_GATE_KIND``: a suite of the gate's own takes it as its ``gate_kind``."""
    return str(request.param)


@pytest.fixture
def ports(make_gate: MakeGate, gate_kind: str) -> ClaimPorts:
    """A fresh, empty adapter of each kind: its three ports over one store."""
    return make_gate(gate_kind)


@pytest.fixture
def gate(ports: ClaimPorts) -> ClaimGate:
    """A fresh, empty claim gate of each kind."""
    return ports


@pytest.fixture
def outbox(ports: ClaimPorts) -> Outbox:
    """The outbox of ``gate`` (the same adapter): the claims there write its events."""
    return ports


@pytest.fixture
def rate_counter(ports: ClaimPorts) -> RateCounter:
    """The rate counters of ``gate`` (the same adapter)."""
    return ports


@pytest.fixture
def redis_gate(make_gate: MakeGate) -> Any:
    """A Redis gate, for what only Redis has (its keys, its script cache); ``Any`` for its insides."""
    return make_gate("redis")


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """This test's own environment for ``Settings.from_env()``: no developer's ``SHOPCARDD_*``
    leaks in; the data folder is the test's."""
    for name in [name for name in os.environ if name.startswith("SHOPCARDD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SHOPCARDD_DATA_DIR", str(tmp_path))
    return monkeypatch


@pytest.fixture
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """``make_store("sqlite", path=None)`` or ``make_store("mongo", database=None)``; stores made
    with the same ``path`` or ``database`` share their records (``database`` is a name within
    this test's own database name, never a database outside the test)."""
    made: list[Any] = []
    databases: list[tuple[str, str]] = []

    def make(kind: str, *, path: Path | None = None, database: str | None = None) -> Any:
        if kind == "sqlite":
            from shopcardd_backend.stores.sqlite import SqliteDocumentStore

            store: Any = SqliteDocumentStore(path or tmp_path / f"store-{len(made)}.sqlite3")
        elif kind == "mongo":
            from shopcardd_backend.stores.mongo import MongoDocumentStore

            uri = request.getfixturevalue("mongodb_uri")
            database = f"{request.getfixturevalue('mongodb_database_name')}_{database or len(made)}"
            databases.append((uri, database))
            store = MongoDocumentStore(uri, database)
            store.ensure_indexes()
        else:
            raise ValueError(f"no store of kind {kind!r}")
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
    for uri, database in databases:
        import pymongo

        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=2000) as client:
            client.drop_database(database)


@pytest.fixture(params=_kind_params(STORE_KINDS))
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(make_store: MakeStore, store_kind: str) -> DocumentStore:
    """A fresh, empty document store of each kind (Mongo: SecantusDB or SHOPCARDD_MONGODB_URI)."""
    return make_store(store_kind)
