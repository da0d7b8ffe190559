"""Who may call: user tokens from the configured identity provider, cached once verified."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from shopcardd_backend.app import create_app
from shopcardd_backend.identity import Unauthorized, UserTokenVerifier
from shopcardd_voucher import SigningKey

from .conftest import Api, assert_problem, build_settings

ISSUER = "https://id.example"
SECRET = "s" * 40


def _claims(user: str = "alice", ttl: int = 600, issuer: str = ISSUER) -> dict[str, object]:
    now = int(time.time())
    return {"iss": issuer, "sub": user, "iat": now, "exp": now + ttl}


def _claim_with(api: Api, token: str) -> int:
    deal = api.create_deal(api.merchant_key("m1"))["deal_id"]
    return api.claim(deal, token, "k").status_code


def test_hs256_secret_from_the_identity_provider(tmp_path: Path) -> None:
    settings = build_settings(tmp_path, user_secret=SECRET, user_issuer=ISSUER)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        assert _claim_with(api, jwt.encode(_claims(), SECRET, algorithm="HS256")) == 201
        other_secret = jwt.encode(_claims(), "t" * 40, algorithm="HS256")
        assert_problem(api.claim("any", other_secret, "k"), 401, "unauthorized")
        wrong_issuer = jwt.encode(_claims(issuer="https://evil.example"), SECRET, algorithm="HS256")
        assert_problem(api.claim("any", wrong_issuer, "k"), 401, "unauthorized")


def test_public_keys_of_the_identity_provider(tmp_path: Path) -> None:
    key = SigningKey.generate("idp-1", "ES256")
    jwks = tmp_path / "idp.json"
    jwks.write_text(json.dumps({"keys": [key.verification_key().to_jwk()]}))
    settings = build_settings(tmp_path, user_jwks=str(jwks), user_issuer=ISSUER)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        good = jwt.encode(_claims(), key.private_key, algorithm="ES256", headers={"kid": "idp-1"})
        assert _claim_with(api, good) == 201
        unsigned = jwt.encode(_claims(), None, algorithm="none", headers={"kid": "idp-1"})
        assert_problem(api.claim("any", unsigned, "k"), 401, "unauthorized")
        # An HMAC made with the public key as its secret must not pass (algorithm confusion).
        pem = key.verification_key().to_jwk()["x"]
        confused = jwt.encode(_claims(), pem, algorithm="HS256", headers={"kid": "idp-1"})
        assert_problem(api.claim("any", confused, "k"), 401, "unauthorized")


def test_a_refused_token_is_told_why_in_our_words_not_the_jwt_library_s(tmp_path: Path) -> None:
    settings = build_settings(tmp_path, user_secret=SECRET, user_issuer=ISSUER)
    good = jwt.encode(_claims(), SECRET, algorithm="HS256")
    head, payload, signature = good.split(".")
    now = int(time.time())
    expired = {"iss": ISSUER, "sub": "alice", "iat": now - 600, "exp": now - 300}
    cases = {
        "not-a-jwt": "the bearer token is not a well-formed JWT",  # PyJWT: "Not enough segments"
        f"t7e3.{payload}.{signature}": "the bearer token is not a well-formed JWT",  # header not UTF-8
        f"{head}.{payload}.{signature[:-4]}AAAA": "the bearer token's signature does not verify",
        jwt.encode(expired, SECRET, algorithm="HS256"): "the bearer token has expired",
        jwt.encode(_claims(issuer="https://evil.example"), SECRET, algorithm="HS256"): (
            "the bearer token is not from this API's identity provider (iss)"
        ),
        jwt.encode(_claims(), None, algorithm="none"): (
            "the bearer token's alg is not the algorithm of its key"
        ),
    }
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        for token, why in cases.items():
            assert assert_problem(api.claim("any", token, "k"), 401, "unauthorized")["detail"] == why, token


def test_a_verified_token_is_remembered_until_it_expires() -> None:
    verifier = UserTokenVerifier(ISSUER, secret=SECRET.encode(), cache_size=2, leeway=0)
    checks: list[str] = []
    real = verifier._verify

    def counting(token: str) -> tuple[str, int]:
        checks.append(token)
        return real(token)

    verifier._verify = counting  # type: ignore[method-assign]
    token = jwt.encode(_claims(ttl=60), SECRET, algorithm="HS256")
    assert verifier.user_id(token) == verifier.user_id(token) == "alice"
    assert len(checks) == 1
    with pytest.raises(Unauthorized):
        verifier.user_id(token, now=time.time() + 120)
    for user in ("u1", "u2", "u3"):  # the cache stays within its bound
        verifier.user_id(jwt.encode(_claims(user), SECRET, algorithm="HS256"))
    assert len(verifier._cache) <= 2


def test_a_token_whose_user_id_cannot_go_in_a_voucher_is_refused() -> None:
    verifier = UserTokenVerifier(ISSUER, secret=SECRET.encode())
    for sub in ("has space", "x" * 65, ""):
        with pytest.raises(Unauthorized):
            verifier.user_id(jwt.encode(_claims(sub), SECRET, algorithm="HS256"))


def test_production_settings_refuse_placeholders(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="SHOPCARDD_USER_JWKS"):
        build_settings(tmp_path, environment="production")
    with pytest.raises(ValidationError, match="placeholder"):
        build_settings(tmp_path, environment="production", user_secret="changethis")
    assert build_settings(tmp_path, environment="production", user_secret=SECRET).environment == "production"


def test_expiry_has_a_30_second_leeway_for_clock_skew(tmp_path: Path) -> None:
    """As docs/backend-api.md says: a token is accepted up to 30 s past its exp, not beyond."""
    settings = build_settings(tmp_path, user_secret=SECRET, user_issuer=ISSUER)
    now = int(time.time())

    def expired(seconds_ago: int) -> str:
        claims = {"iss": ISSUER, "sub": "alice", "iat": now - 600, "exp": now - seconds_ago}
        return jwt.encode(claims, SECRET, algorithm="HS256")

    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        assert _claim_with(api, expired(10)) == 201
        assert_problem(api.claim("any", expired(50), "k"), 401, "unauthorized")
