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
