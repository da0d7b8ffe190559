"""Settings read the way an operator writes them: a MongoDB URI's database is the one used."""

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
