"""Device keys and device tokens (``shopcardd_voucher.device_auth``): what a counter signs and the
backend accepts, and nothing else."""

from __future__ import annotations

import subprocess
import sys

import jwt
import pytest

from shopcardd_voucher import InvalidKeyError, SigningKey
from shopcardd_voucher.device_auth import (
    MAX_DEVICE_TOKEN_SECONDS,
    DeviceTokenError,
    make_device_token,
    parse_public_jwk,
    public_jwk,
    read_device_token,
)

AUD = "https://api.shopcardd.example"
NOW = 1_800_000_000


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate("till-1")


def test_a_token_round_trips_with_the_public_jwk(key: SigningKey) -> None:
    token = make_device_token(key, AUD, now=NOW, token_id="t" * 22)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": "till-1", "typ": "JWT"}
    claims = read_device_token(token, parse_public_jwk(public_jwk(key)), AUD, now=NOW + 10)
    assert (claims.device_id, claims.token_id, claims.expires_at) == ("till-1", "t" * 22, NOW + 300)
    assert make_device_token(key, AUD) != make_device_token(key, AUD), "a new jti each time"


def _signed(key: SigningKey, **claims: object) -> str:
    base = {"sub": key.kid, "aud": AUD, "iat": NOW, "exp": NOW + 60, "jti": "j" * 22}
    return jwt.encode({**base, **claims}, key.private_key, algorithm=key.alg, headers={"kid": key.kid})


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"iat": NOW - 200, "exp": NOW - 120}, "expired"),
        ({"aud": "https://elsewhere.example"}, "audience"),
        ({"exp": NOW + MAX_DEVICE_TOKEN_SECONDS + 1}, "at most"),
        ({"iat": NOW + 3600, "exp": NOW + 3660}, "future"),
        ({"sub": "till-2"}, "sub"),
        ({"jti": "short"}, "jti"),
        ({"jti": None}, "jti"),
    ],
)
def test_a_token_outside_the_rules_is_refused_saying_why(key: SigningKey, claims: dict, why: str) -> None:
    token = _signed(key, **{k: v for k, v in claims.items() if v is not None})
    if claims.get("jti", "") is None:
        token = jwt.encode(
            {"sub": key.kid, "aud": AUD, "iat": NOW, "exp": NOW + 60},
            key.private_key,
            algorithm="EdDSA",
            headers={"kid": key.kid},
        )
    with pytest.raises(DeviceTokenError, match=why):
        read_device_token(token, key.private_key.public_key(), AUD, now=NOW)


def test_the_algorithm_comes_from_the_key(key: SigningKey) -> None:
    public = key.private_key.public_key()
    unsigned = jwt.encode({"sub": key.kid}, None, algorithm="none", headers={"kid": key.kid})
    es256 = SigningKey.generate(key.kid, "ES256")
    for token in (unsigned, _signed(es256), _signed(SigningKey.generate(key.kid))):
        with pytest.raises(DeviceTokenError):
            read_device_token(token, public, AUD, now=NOW)
    with pytest.raises(InvalidKeyError):
        make_device_token(es256, AUD)


@pytest.mark.parametrize(
    "change",
    [
        {"d": "AAAA"},
        {"kty": "EC"},
        {"crv": "X25519"},
        {"x": "AAAA"},
        {"x": None},
        {"alg": "ES256"},
        {"n": "AQAB"},
    ],
)
def test_only_a_public_ed25519_jwk_is_a_device_key(key: SigningKey, change: dict) -> None:
    jwk = {k: v for k, v in {**public_jwk(key), **change}.items() if v is not None}
    with pytest.raises(DeviceTokenError):
        parse_public_jwk(jwk)


def test_the_module_loads_no_backend_library() -> None:
    code = (
        "import sys, shopcardd_voucher.device_auth; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'fastapi', 'pymongo', 'redis', 'pika', 'shopcardd_backend', 'shopcardd_device', 'requests'}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
