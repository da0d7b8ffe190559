"""``shopcardd-provision enroll`` against a served backend (``shopcardd-backend serve`` in a
subprocess), as a merchant's technician runs it; the bundle it writes is the device's config."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shopcardd_bench.served import running_backend
from shopcardd_device.config import DeviceConfig
from shopcardd_voucher import KeySet, SigningKey
from shopcardd_voucher.device_auth import make_device_token

BIN = Path(sys.executable).parent


def run(program: str, *args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / program, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The embedded profile on this test's own data folder; nothing of the developer's settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPCARDD_", "PROMETHEUS_"))}
    return {**clean, "SHOPCARDD_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    with running_backend(env, tmp_path / "serve.log") as backend:
        yield backend.url


@pytest.fixture
def api_key(env: dict[str, str], server: str) -> str:
    made = run("shopcardd-backend", "merchant", "create", "--merchant", "cafe-42", env=env)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


def enroll(env: dict[str, str], key: str | None, *args: str | Path) -> subprocess.CompletedProcess[str]:
    with_key = {**env, "SHOPCARDD_API_KEY": key} if key is not None else env
    return run("shopcardd-provision", "enroll", *args, env=with_key)


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shopcardd-provision enroll: "), result.stderr
    return lines[0]


def test_enroll_writes_a_bundle_the_device_accepts_and_can_sync_with(
    env: dict[str, str], server: str, api_key: str, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    args = ["--merchant", "cafe-42", "--device", "till-1", "--backend", server + "/", "--out", out]
    done = enroll(env, api_key, *args, "--data-dir", tmp_path / "ledger")
    assert done.returncode == 0, done.stderr
    assert "enrolled device 'till-1'" in done.stderr and api_key not in done.stdout + done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "device.private.pem").stat().st_mode) == 0o600
    assert sorted(p.name for p in out.iterdir()) == [
        "device.private.pem",
        "device.toml",
        "jwks.json",
        "trust-key.json",
    ]

    config = DeviceConfig.load(out / "device.toml")
    assert (config.device_id, config.merchant_id, config.backend_url) == ("till-1", "cafe-42", server)
    assert config.keyset == out / "jwks.json" and config.device_key == out / "device.private.pem"
    served = httpx.get(f"{server}/.well-known/jwks.json").json()
    assert KeySet.load(config.keyset).to_jwks() == KeySet.from_jwks(served).to_jwks()
    status = run("shopcardd-device", "status", "--config", out / "device.toml", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["device_id"] == "till-1"

    key = SigningKey.load(config.device_id, config.device_key)
    token = make_device_token(key, config.backend_url or "")
    body = {"redemptions": [{"voucher_id": "v1", "deal_id": "d1", "redeemed_at": "2026-12-01T10:00:00Z"}]}
    synced = httpx.post(f"{server}/v1/devices/sync", json=body, headers={"Authorization": f"Bearer {token}"})
    assert synced.status_code == 200, synced.text
    assert synced.json()["results"][0]["status"] == "ok"

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = one_line(enroll(env, api_key, *args), 1)
    assert "already holds a device bundle" in again
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "never overwritten"
    taken = one_line(enroll(env, api_key, *args[:-1], tmp_path / "other"), 1)
    assert "'till-1' is enrolled already" in taken
    assert not (tmp_path / "other").exists()


def test_a_refused_key_or_merchant_leaves_nothing_behind(
    env: dict[str, str], server: str, api_key: str, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    args = ["--device", "till-1", "--backend", server, "--out", out]
    wrong_key = one_line(enroll(env, "sck_not-a-key", "--merchant", "cafe-42", *args), 1)
    assert "refused the merchant's API key" in wrong_key and "SHOPCARDD_API_KEY" in wrong_key
    other = one_line(enroll(env, api_key, "--merchant", "cafe-43", *args), 1)
    assert "cafe-42" in other and "cafe-43" in other
    assert not out.exists()
    assert enroll(env, api_key, "--merchant", "cafe-42", *args).returncode == 0, "the id was not taken"


def test_an_unreachable_backend_is_one_line_exit_1(
    env: dict[str, str], unused_port: int, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    args = ["--merchant", "m", "--device", "d", "--backend", f"http://127.0.0.1:{unused_port}", "--out", out]
    line = one_line(enroll(env, "sck_x", *args), 1)
    assert line.endswith(
        f"cannot reach the backend at http://127.0.0.1:{unused_port}/.well-known/jwks.json"
        " ([Errno 111] Connection refused)"
    ), line
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--device", "a b"], "--device"),
        (["--merchant", ""], "--merchant"),
        (["--backend", "ftp://x"], "--backend"),
        (["--backend", "api.example.com"], "--backend"),
    ],
)
def test_usage_errors_exit_2_before_anything_happens(
    env: dict[str, str], tmp_path: Path, args: list[str], why: str
) -> None:
    base = {
        "--merchant": "m",
        "--device": "d",
        "--backend": "http://127.0.0.1:9",
        "--out": str(tmp_path / "b"),
    }
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    result = enroll(env, "sck_x", *[part for pair in base.items() for part in pair])
    assert result.returncode == 2 and why in result.stderr, result.stderr
    assert not (tmp_path / "b").exists()


def test_the_api_key_never_comes_from_an_argument(env: dict[str, str], tmp_path: Path) -> None:
    args = ["--merchant", "m", "--device", "d", "--backend", "http://127.0.0.1:9", "--out", tmp_path / "b"]
    missing = one_line(enroll(env, None, *args), 2)
    assert "set SHOPCARDD_API_KEY" in missing
    assert enroll(env, None, *args, "--api-key", "sck_x").returncode == 2
    assert not (tmp_path / "b").exists()


def test_enroll_refuses_plain_http_to_another_machine(env: dict[str, str], tmp_path: Path) -> None:
    """Whoever answers enrolment is trusted by the counter from then on: no plain http off loopback."""
    out = tmp_path / "b"
    args = ["--merchant", "m", "--device", "d", "--out", str(out)]
    result = enroll(env, "sck_x", *args, "--backend", "http://api.example.com")
    assert result.returncode == 2, result.stderr
    assert "plain http to another machine: use https://" in result.stderr
    assert not out.exists()
