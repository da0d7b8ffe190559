"""``shopcardd-backend`` as an operator types it: serve, merchant create, user-token."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shopcardd_bench.claims import running_backend
from shopcardd_voucher import KeySet, Reason, verify

EXE = str(Path(sys.executable).with_name("shopcardd-backend"))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of the commands: the embedded profile on this test's own data folder."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPCARDD_", "PROMETHEUS_"))}
    return {**clean, "SHOPCARDD_DATA_DIR": str(tmp_path / "data")}


def backend(env: dict[str, str], *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([EXE, *args], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == expect, proc.stderr
    return proc


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """``shopcardd-backend serve --workers 2`` on a free port, ready; it must stop cleanly."""
    with running_backend(env, tmp_path / "serve.log", workers=2) as backend:
        yield backend.url
    assert backend.process.returncode == 0
    assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()


def test_commands_share_the_stores_of_the_server(env: dict[str, str], server: str, tmp_path: Path) -> None:
    created = backend(env, "merchant", "create", "--merchant", "cafe")
    api_key = created.stdout.strip().splitlines()[-1]
    tokens = backend(env, "user-token", "alice", "bob").stdout.split()
    assert len(tokens) == 2
    body = {"title": "2 for 1", "stock": 2, "per_user_limit": 1, "voucher_ttl_seconds": 600}
    deal = httpx.post(f"{server}/v1/deals", json=body, headers={"X-API-Key": api_key}).json()
    claims = [
        httpx.post(
            f"{server}/v1/deals/{deal['deal_id']}/claims",
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "k1"},
        )
        for token in tokens
    ]
    assert [c.status_code for c in claims] == [201, 201]
    keys = KeySet.from_jwks(httpx.get(f"{server}/.well-known/jwks.json").json())
    assert all(verify(c.json()["token"], keys, merchant="cafe").reason is Reason.ACCEPTED for c in claims)
    # Both worker processes sign with the one key made on first start, kept private.
    private = list((tmp_path / "data" / "keys").glob("*.private.pem"))
    assert len(private) == 1 and len(keys) == 1
    assert stat.S_IMODE(private[0].stat().st_mode) == 0o600
    metrics = httpx.get(f"{server}/metrics").text
    assert 'shopcardd_claims_total{outcome="issued"} 2.0' in metrics


def test_merchant_create_shows_the_key_once_and_refuses_a_second_time(env: dict[str, str]) -> None:
    first = backend(env, "merchant", "create", "--merchant", "cafe")
    key = first.stdout.strip().splitlines()[-1]
    assert key.startswith("sck_") and len(key) > 40
    again = backend(env, "merchant", "create", "--merchant", "cafe", expect=1)
    assert "already exists" in again.stderr
    assert key not in again.stdout
    backend(env, "merchant", "create", "--merchant", "bad id", expect=1)


def test_user_token_prints_one_token_per_user_in_order(env: dict[str, str]) -> None:
    import jwt

    tokens = backend(env, "user-token", "u1", "u2", "u3").stdout.splitlines()
    assert [jwt.decode(t, options={"verify_signature": False})["sub"] for t in tokens] == ["u1", "u2", "u3"]


def test_commands_not_built_yet_say_so(env: dict[str, str]) -> None:
    assert "not yet built" in backend(env, "relay", expect=2).stderr
    assert "not yet built" in backend(env, "worker", "persist", expect=2).stderr


def test_production_refuses_the_development_identity(env: dict[str, str]) -> None:
    env = {**env, "SHOPCARDD_ENVIRONMENT": "production"}
    refused = backend(env, "user-token", "alice", expect=2)
    assert "SHOPCARDD_USER_JWKS" in refused.stderr
    weak = backend(
        {**env, "SHOPCARDD_USER_SECRET": "changethis"}, "merchant", "create", "--merchant", "m", expect=2
    )
    assert "placeholder" in weak.stderr


def test_deal_rebuild_leaves_a_held_deal_alone_and_names_an_unknown_one(
    env: dict[str, str], server: str
) -> None:
    api_key = backend(env, "merchant", "create", "--merchant", "cafe").stdout.strip().splitlines()[-1]
    body = {"title": "tea", "stock": 3, "per_user_limit": 1, "voucher_ttl_seconds": 600}
    deal = httpx.post(f"{server}/v1/deals", json=body, headers={"X-API-Key": api_key}).json()["deal_id"]
    (token,) = backend(env, "user-token", "alice").stdout.split()
    claim = httpx.post(
        f"{server}/v1/deals/{deal}/claims",
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "k"},
    )
    assert claim.status_code == 201
    assert "with 2 vouchers left" in backend(env, "deal", "rebuild", deal).stdout
    missing = backend(env, "deal", "rebuild", "no-such-deal", expect=1)
    assert "no deal 'no-such-deal'" in missing.stderr
