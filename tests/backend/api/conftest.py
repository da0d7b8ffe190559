"""API-level fixtures: the app on each profile, on this test's own files, Redis prefix and database.

``profile`` runs a test on the embedded profile (SQLite gate and store under ``tmp_path``) and
on the scaled one: the machine's Redis for the gate (a key prefix of this test's own) and
MongoDB for the store (SecantusDB started by the root conftest, or ``SHOPCARDD_MONGODB_URI``;
a database of this test's own, dropped afterwards). Settings are built here, never read from
the developer's environment.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from shopcardd_backend.app import create_app
from shopcardd_backend.identity import dev_identity_key, mint_user_token, register_merchant
from shopcardd_backend.settings import Settings
from shopcardd_voucher import SigningKey
from shopcardd_voucher.device_auth import make_device_token, public_jwk

PROFILES = ["embedded", pytest.param("scaled", marks=[pytest.mark.redis, pytest.mark.mongo])]


def build_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test: every profile field given, so the environment cannot leak in."""
    values: dict[str, Any] = {
        "environment": "development",
        "data_dir": data_dir,
        "redis_url": None,
        "mongodb_uri": None,
        "amqp_url": None,
        "user_jwks": None,
        "user_secret": None,
        "user_issuer": "shopcardd-test",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings(profile: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    if profile == "embedded":
        yield build_settings(tmp_path / "data")
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    mongodb_uri = request.getfixturevalue("mongodb_uri")
    database = request.getfixturevalue("mongodb_database_name")
    yield build_settings(
        tmp_path / "data",
        redis_url=url,
        redis_prefix=prefix,
        mongodb_uri=mongodb_uri,
        mongodb_database=database,
    )
    delete_redis_keys(url, prefix)
    drop_database(mongodb_uri, database)


def delete_redis_keys(url: str, prefix: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


def drop_database(uri: str, database: str) -> None:
    import pymongo

    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=2000) as client:
        client.drop_database(database)


@dataclass
class Api:
    """A client of the running app with the helpers a test needs to act as merchant or user."""

    client: TestClient
    settings: Settings

    def merchant_key(self, merchant_id: str = "m1") -> str:
        return register_merchant(self.client.app.state.runtime.store, merchant_id)  # type: ignore[attr-defined]

    def user_token(self, user: str, ttl: int = 3600, now: float | None = None) -> str:
        key = dev_identity_key(self.settings)
        return mint_user_token(
            key, self.settings.user_issuer, user, ttl, now=now, audience=self.settings.user_audience
        )

    def create_deal(self, api_key: str, **fields: Any) -> dict[str, Any]:
        body = {"title": "Half-price coffee", "stock": 5, "per_user_limit": 2, "voucher_ttl_seconds": 3600}
        body.update(fields)
        response = self.client.post("/v1/deals", json=body, headers={"X-API-Key": api_key})
        assert response.status_code == 201, response.text
        return response.json()

    def claim(
        self, deal_id: str, token: str, key: str, headers: dict[str, Any] | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key, **(headers or {})}
        return self.client.post(f"/v1/deals/{deal_id}/claims", headers=headers, **kwargs)


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Api(client, settings)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of ``shopcardd-backend`` commands: the embedded profile on this test's own
    data folder, nothing from the developer's ``SHOPCARDD_*`` settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPCARDD_", "PROMETHEUS_"))}
    return {**clean, "SHOPCARDD_DATA_DIR": str(tmp_path / "data")}


def make_identity_key(env: dict[str, str]) -> None:
    """The development identity key ``serve`` makes on first start, in ``env``'s data folder, for
    a test of ``user-token`` that needs no server (``user-token`` never makes it)."""
    dev_identity_key(build_settings(Path(env["SHOPCARDD_DATA_DIR"])))


def backend(env: dict[str, str], *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """Run ``shopcardd-backend ARGS`` as an operator would; it must exit with ``expect``."""
    exe = str(Path(sys.executable).with_name("shopcardd-backend"))
    proc = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == expect, proc.stderr
    return proc


def backend_in_process(env: dict[str, str], *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """``backend(env, ARGS)`` answered by ``cli.main`` in this process, with ``env`` as the whole
    environment: for the tests about what a command says, where a process (most of a second
    importing FastAPI and pydantic, many times that on a busy machine) proves nothing more. An
    exception is not caught, so it fails the test as a traceback would."""
    from shopcardd_backend import cli

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for name in os.environ:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        patch.setattr(sys, "stdout", out)
        patch.setattr(sys, "stderr", err)
        try:
            code = cli.main(list(args))
        except SystemExit as exc:  # argparse: --help, a usage error
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    assert code == expect, err.getvalue()
    return subprocess.CompletedProcess(["shopcardd-backend", *args], code, out.getvalue(), err.getvalue())


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem document with this status and machine-readable code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["title"] and problem["detail"]
    return problem


# --- Devices (device enrolment and sync) ---

AUDIENCE = "http://testserver"
"""The audience of device tokens in TestClient tests: the URL the requests reach the app at."""
T_REDEEMED = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def redemption(voucher_id: str, deal_id: str = "d1", at: int = 0) -> dict[str, Any]:
    """One redemption as a counter uploads it, ``at`` seconds after 2026-12-01T10:00:00Z."""
    when = (T_REDEEMED + timedelta(seconds=at)).isoformat().replace("+00:00", "Z")
    return {"voucher_id": voucher_id, "deal_id": deal_id, "redeemed_at": when}


@dataclass
class Counter:
    """An enrolled counter device as the backend sees it over HTTP: its key makes its tokens."""

    api: Api
    device_id: str
    key: SigningKey
    merchant_key: str

    @property
    def headers(self) -> dict[str, str]:
        """The merchant's headers, for the merchant routes a test calls beside the sync."""
        return {"X-API-Key": self.merchant_key}

    def token(self, **kwargs: Any) -> str:
        return make_device_token(self.key, AUDIENCE, **kwargs)

    def bearer(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token()}"}

    def sync(
        self, redemptions: list[dict[str, Any]], watermark: str | None = None, token: str | None = None
    ) -> httpx.Response:
        body = {"redemptions": redemptions, "revocations_after": watermark}
        return self.api.client.post("/v1/devices/sync", json=body, headers=self.bearer(token))


def enrol(api: Api, merchant_key: str, device_id: str) -> Counter:
    """Enrol a new counter with a fresh Ed25519 key, as ``shopcardd-provision enroll`` does."""
    key = SigningKey.generate(device_id)
    body = {"device_id": device_id, "public_key": public_jwk(key)}
    made = api.client.post("/v1/devices", json=body, headers={"X-API-Key": merchant_key})
    assert made.status_code == 201, made.text
    return Counter(api, device_id, key, merchant_key)
