"""Settings read the way an operator writes them: a MongoDB URI's database is the one used, a
Redis Cluster's URL may list several nodes."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pymongo
import pytest

from shopcardd_backend.runtime import Runtime

from .conftest import build_settings, drop_database


def naming(uri: str, database: str) -> str:
    """``uri`` with ``database`` in its path, as ``mongodb://host/shop`` names ``shop``."""
    return urlunsplit(urlsplit(uri)._replace(path="/" + database))


@pytest.mark.mongo
def test_the_database_a_mongodb_uri_names_is_the_one_the_store_writes(
    tmp_path: Path, mongodb_uri: str, mongodb_database_name: str
) -> None:
    settings = build_settings(tmp_path, mongodb_uri=naming(mongodb_uri, mongodb_database_name))
    try:
        with Runtime(settings) as runtime:
            runtime.store.ensure_indexes()
        with pymongo.MongoClient(mongodb_uri, serverSelectionTimeoutMS=2000) as client:
            assert "vouchers" in client[mongodb_database_name].list_collection_names()
    finally:
        drop_database(mongodb_uri, mongodb_database_name)


def test_shopcardd_mongodb_database_wins_over_the_uri_and_the_default_is_shopcardd(tmp_path: Path) -> None:
    named = naming("mongodb://db-1:27017,db-2:27017/?replicaSet=rs0", "shop")
    assert build_settings(tmp_path, mongodb_uri=named).mongodb_database == "shop"
    assert build_settings(tmp_path, mongodb_uri=named, mongodb_database="other").mongodb_database == "other"
    assert build_settings(tmp_path, mongodb_uri="mongodb://db-1/").mongodb_database == "shopcardd"


@pytest.mark.mongo
def test_stale_tolerant_reads_go_where_the_read_preference_says(
    tmp_path: Path, mongodb_uri: str, mongodb_database_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica set's secondaries can take the merchant's lists and stats off the primary; a
    single server (SecantusDB) still answers them."""
    from shopcardd_backend.settings import Settings

    monkeypatch.setenv("SHOPCARDD_MONGODB_READ_PREFERENCE", "secondaryPreferred")
    assert Settings.from_env().mongodb_read_preference == "secondaryPreferred"
    settings = build_settings(
        tmp_path,
        mongodb_uri=mongodb_uri,
        mongodb_database=mongodb_database_name,
        mongodb_read_preference="secondaryPreferred",
    )
    try:
        with Runtime(settings) as runtime:
            store = runtime.store
            assert store.stale_reads.mongos_mode == "secondaryPreferred"  # type: ignore[attr-defined]
            assert store.deals_of_merchant("m1", 10).deals == []
            assert store.claims_by_minute("d1") == []
            assert store.conflicts_of_merchant("m1", 10) == []
    finally:
        drop_database(mongodb_uri, mongodb_database_name)


def test_the_read_preference_defaults_to_primary_and_a_misspelt_one_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shopcardd_backend.settings import Settings, SettingsError

    assert Settings.from_env().mongodb_read_preference == "primary"
    monkeypatch.setenv("SHOPCARDD_MONGODB_READ_PREFERENCE", "secondary_preferred")
    with pytest.raises(SettingsError, match="SHOPCARDD_MONGODB_READ_PREFERENCE"):
        Settings.from_env()


NODES = "redis://:s3cr3t@10.0.0.1:6379, redis://:s3cr3t@10.0.0.2:6379,redis://:s3cr3t@[fd00::3]:6380"
"""A Redis Cluster's nodes, as an operator lists them (a space after a comma is allowed)."""


def test_a_redis_cluster_url_may_list_several_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each node of the list is one a process can start from while the others are down; one URL
    is read as before."""
    from shopcardd_backend.settings import Settings, redis_node_urls

    monkeypatch.setenv("SHOPCARDD_REDIS_URL", NODES)
    monkeypatch.setenv("SHOPCARDD_REDIS_CLUSTER", "true")
    assert Settings.from_env().redis_url == NODES
    assert [(urlsplit(url).hostname, urlsplit(url).port) for url in redis_node_urls(NODES)] == [
        ("10.0.0.1", 6379),
        ("10.0.0.2", 6379),
        ("fd00::3", 6380),
    ]
    one = "rediss://u:s3cr3t@one-node:6379/0?ssl_cert_reqs=none"
    for cluster in ("true", "false"):
        monkeypatch.setenv("SHOPCARDD_REDIS_URL", one)
        monkeypatch.setenv("SHOPCARDD_REDIS_CLUSTER", cluster)
        assert redis_node_urls(Settings.from_env().redis_url or "") == [one]


@pytest.mark.parametrize(
    ("value", "cluster", "says"),
    [
        (NODES, "false", "SHOPCARDD_REDIS_CLUSTER=true"),
        ("redis://:s3cr3t@10.0.0.1:6379,rediss://:s3cr3t@10.0.0.2:6379", "true", "one scheme"),
        ("redis://:s3cr3t@10.0.0.1:6379,redis://:0ther-cr3t@10.0.0.2:6379", "true", "user and password"),
        ("redis://:s3cr3t@10.0.0.1:6379,redis://10.0.0.2:6379", "true", "one user and password"),
        ("redis://:s3cr3t@10.0.0.1:6379,redis://cr3t:s3cr3t@10.0.0.2:6379", "true", "user and password"),
        ("redis://:s3cr3t@10.0.0.1:6379,,redis://:s3cr3t@10.0.0.2:6379", "true", "empty item"),
        ("redis://:s3cr3t@10.0.0.1:6379,", "true", "empty item"),
        ("redis://:s3cr3t@10.0.0.1:6379,10.0.0.2:6379", "true", "must start with"),
        ("redis://:s3,cr3t@10.0.0.1:6379", "true", "%2C"),
        ("redis://:s3cr3t@10.0.0.1:6379,redis://:s3cr3t@10.0.0.2:x", "true", "HOST[:PORT]"),
    ],
)
def test_a_redis_node_list_that_cannot_work_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, cluster: str, says: str
) -> None:
    """Mixed schemes or credentials would quietly be the first URL's; the message never echoes a
    URL, which holds the password."""
    from shopcardd_backend.settings import Settings, SettingsError

    monkeypatch.setenv("SHOPCARDD_REDIS_URL", value)
    monkeypatch.setenv("SHOPCARDD_REDIS_CLUSTER", cluster)
    with pytest.raises(SettingsError) as refused:
        Settings.from_env()
    message = str(refused.value)
    assert message.startswith("SHOPCARDD_REDIS_URL") and "\n" not in message, message
    assert says in message and "cr3t" not in message, message
