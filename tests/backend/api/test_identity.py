"""Who may call: user tokens from the configured identity provider, cached once verified."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from shopcardd_backend.app import create_app
from shopcardd_backend.identity import Unauthorized, User, UserTokenVerifier, _PublicKey
from shopcardd_backend.settings import Settings, SettingsError
from shopcardd_voucher import ID_RULE, SigningKey

from .conftest import Api, assert_problem, backend, backend_in_process, build_settings, make_identity_key

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
    tokens = {user: jwt.encode(_claims(user), SECRET, algorithm="HS256") for user in ("u1", "u2", "u3")}
    for user_token in tokens.values():  # the cache stays within its bound
        verifier.user_id(user_token)
    assert len(verifier._cache) <= 2
    checks.clear()
    verifier.user_id(tokens["u3"])
    assert checks == [], "the newest stays"
    verifier.user_id(tokens["u1"])
    assert checks == [tokens["u1"]], "the oldest went first"


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
    production = build_settings(
        tmp_path,
        environment="production",
        user_secret=SECRET,
        user_audience="api",
        device_audience="https://api.example",
    )
    assert production.environment == "production"


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


AUDIENCE = "shopcardd-api"


def test_a_user_token_for_another_application_is_refused_when_the_audience_is_set(tmp_path: Path) -> None:
    """A token the identity provider issued to another application (another ``aud``) is not a
    login to this API; without ``SHOPCARDD_USER_AUDIENCE`` (development) ``aud`` is not read."""
    settings = build_settings(tmp_path, user_secret=SECRET, user_issuer=ISSUER, user_audience=AUDIENCE)
    ours = jwt.encode({**_claims(), "aud": AUDIENCE}, SECRET, algorithm="HS256")
    theirs = jwt.encode({**_claims(), "aud": "photo-app"}, SECRET, algorithm="HS256")
    several = jwt.encode({**_claims(), "aud": ["photo-app", AUDIENCE]}, SECRET, algorithm="HS256")
    none = jwt.encode(_claims(), SECRET, algorithm="HS256")
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        deal = api.create_deal(api.merchant_key("m1"))["deal_id"]
        assert api.claim(deal, ours, "k1").status_code == 201
        assert api.claim(deal, several, "k2").status_code == 201
        problem = assert_problem(api.claim("any", theirs, "k"), 401, "unauthorized")
        assert problem["detail"] == "the bearer token was issued for another application (aud)"
        assert_problem(api.claim("any", none, "k"), 401, "unauthorized")
    unset = UserTokenVerifier(ISSUER, secret=SECRET.encode())
    assert unset.user_id(theirs) == unset.user_id(none) == "alice"


def test_production_refuses_to_start_without_a_user_audience(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("SHOPCARDD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SHOPCARDD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SHOPCARDD_ENVIRONMENT", "production")
    monkeypatch.setenv("SHOPCARDD_USER_SECRET", SECRET)
    with pytest.raises(SettingsError) as refused:
        Settings.from_env()
    assert str(refused.value).startswith("production needs SHOPCARDD_USER_AUDIENCE")
    assert "\n" not in str(refused.value)
    monkeypatch.setenv("SHOPCARDD_USER_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("SHOPCARDD_DEVICE_AUDIENCE", "https://api.shopcardd.example")
    assert Settings.from_env().user_audience == AUDIENCE


HIDDEN_USER_IDS = {
    "zero-width space": "alice\u200b",
    "right-to-left override": "\u202ealice",
    "left-to-right mark": "alice\u200e",
    "Hangul filler": "alice\u3164",
    "lone surrogate": "alice\ud800",
    "unassigned": "alice\u0378",
    "bell": "alice\x07",
    "private use": "alice\ue000",
}


@pytest.mark.parametrize("sub", HIDDEN_USER_IDS.values(), ids=HIDDEN_USER_IDS.keys())
def test_a_user_id_with_hidden_characters_is_a_401_never_a_new_user_nor_a_500(
    tmp_path: Path, sub: str
) -> None:
    settings = build_settings(tmp_path, user_secret=SECRET, user_issuer=ISSUER)
    token = jwt.encode(_claims(sub), SECRET, algorithm="HS256")  # JSON escapes even a lone surrogate
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        api = Api(client, settings)
        deal = api.create_deal(api.merchant_key("m1"))["deal_id"]
        problem = assert_problem(api.claim(deal, token, "k"), 401, "unauthorized")
        assert problem["detail"] == f"the bearer token's sub must be {ID_RULE}"


def test_one_user_spelt_two_ways_is_one_user_to_the_per_user_limit(tmp_path: Path) -> None:
    settings = build_settings(tmp_path, user_secret=SECRET, user_issuer=ISSUER)
    composed, decomposed = "jos\u00e9", "jose\u0301"
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        deal = api.create_deal(api.merchant_key("m1"), per_user_limit=1)["deal_id"]
        first = api.claim(deal, jwt.encode(_claims(decomposed), SECRET, algorithm="HS256"), "k1")
        assert first.status_code == 201, first.text
        again = api.claim(deal, jwt.encode(_claims(composed), SECRET, algorithm="HS256"), "k2")
        assert_problem(again, 409, "limit_reached")


@pytest.mark.parametrize("user", [b"alice\xff", "alice\u200b".encode(), "\u202ealice".encode(), b"a\x1b[2Jb"])
def test_user_token_refuses_a_user_id_the_api_would_refuse_in_one_line(
    env: dict[str, str], user: bytes
) -> None:
    exe = str(Path(sys.executable).with_name("shopcardd-backend"))
    done = subprocess.run([exe, "user-token", user], env=env, capture_output=True, timeout=60)
    assert done.returncode == 2 and done.stdout == b""
    (line,) = done.stderr.decode("ascii").splitlines()[-1:]
    assert "1 to 64 characters in Unicode NFC" in line and line.isprintable()


def test_user_token_mints_the_nfc_form_with_the_configured_audience(env: dict[str, str]) -> None:
    env = {**env, "SHOPCARDD_USER_AUDIENCE": AUDIENCE}
    make_identity_key(env)
    (token,) = backend(env, "user-token", "jose\u0301").stdout.split()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["sub"], claims["aud"]) == ("jos\u00e9", AUDIENCE)


def _verifiers(audience: str | None) -> tuple[UserTokenVerifier, UserTokenVerifier, SigningKey]:
    """A verifier of an EdDSA key of the identity provider, and one that decodes every token
    with PyJWT alone (the reference: the refusals as they were)."""
    key = SigningKey.generate("idp-1", "EdDSA")
    public = {"idp-1": _PublicKey("EdDSA", key.private_key.public_key())}
    ours, reference = (
        UserTokenVerifier(ISSUER, public_keys=public, audience=audience, cache_size=0) for _ in range(2)
    )
    reference._usual_claims = lambda token: None  # type: ignore[method-assign]
    return ours, reference, key


def _told(verifier: UserTokenVerifier, token: str) -> str:
    try:
        user = verifier.user(token)
    except Unauthorized as exc:
        return f"refused: {exc}"
    return f"accepted: {user}"


def test_a_usual_token_is_checked_without_pyjwt_s_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most claims of a flash sale bring a token no process has seen: it is parsed once and its
    signature checked with the key's own algorithm, not decoded by ``jwt.decode``."""
    verifier, _, key = _verifiers(AUDIENCE)
    claims = {**_claims(), "aud": AUDIENCE, "email": "a@example.com", "jti": "t1"}
    token = jwt.encode(claims, key.private_key, algorithm="EdDSA", headers={"kid": "idp-1"})

    def decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("jwt.decode was called")

    monkeypatch.setattr(jwt, "decode", decode)
    assert verifier.user(token) == User("alice", "a@example.com")


@pytest.mark.parametrize("audience", [AUDIENCE, None])
def test_every_token_is_answered_as_pyjwt_s_decode_answered_it(audience: str | None) -> None:
    """The quick check takes only tokens ``jwt.decode`` accepts, and refuses a bad signature
    with the same reason; every other token goes to ``jwt.decode`` and keeps its reason."""
    ours, reference, key = _verifiers(audience)
    other = SigningKey.generate("idp-1", "EdDSA")
    now = int(time.time())
    base = {**_claims(), "aud": AUDIENCE}

    def signed(claims: dict[str, object], signer: SigningKey = key, **header: object) -> str:
        headers = {"kid": "idp-1", **header}
        return jwt.encode(claims, signer.private_key, algorithm="EdDSA", headers=headers)

    good = signed(base)
    head, payload, signature = good.split(".")
    tokens = [
        good,
        signed(base, other),  # another key, same kid: bad signature
        f"{head}.{payload}.{signature[:-4]}AAAA",
        f"{head}.{payload}=.{signature}",  # padded payload: not canonical
        f"{head}.{payload[:-1]}.{signature}",  # cut payload
        signed({**base, "exp": now - 300}),
        signed({**base, "exp": now - 10}),  # within the leeway
        signed({**base, "exp": str(now + 600)}),
        signed({**base, "exp": True}),
        signed({**base, "iat": now + 600}),
        signed({**base, "iat": "yesterday"}),
        signed({**base, "iat": None}),
        signed({**base, "nbf": now + 600}),
        signed({**base, "nbf": now - 600}),
        signed({**base, "iss": "https://evil.example"}),
        signed({**base, "aud": "photo-app"}),
        signed({**base, "aud": ["photo-app", AUDIENCE]}),
        signed({k: v for k, v in base.items() if k != "aud"}),
        signed({**base, "sub": 42}),
        signed({**base, "sub": "bad\u200bname"}),
        signed({**base, "jti": 7}),
        signed({**base, "exp": None}),
        signed(base, typ="JWT"),
        signed(base, cty="JWT"),
        signed(base, kid="idp-2"),
        jwt.encode(base, key.private_key, algorithm="EdDSA"),  # no kid
        jwt.encode(base, "s" * 40, algorithm="HS256", headers={"kid": "idp-1"}),
        "not-a-jwt",
        f"{head}.{payload}",
    ]
    for token in tokens:
        assert _told(ours, token) == _told(reference, token), token


def test_user_token_in_a_second_shell_without_the_data_folder_makes_no_key(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second shell without SHOPCARDD_DATA_DIR: a key made there would sign tokens the served
    backend refuses; the command says where it looked and what to do, and makes nothing."""
    served = Path(env["SHOPCARDD_DATA_DIR"])
    make_identity_key(env)  # what `serve` made in its folder
    elsewhere = tmp_path / "second-shell"
    elsewhere.mkdir()
    second = {k: v for k, v in env.items() if k != "SHOPCARDD_DATA_DIR"}
    monkeypatch.chdir(elsewhere)  # its ./data is the default data folder
    refused = backend_in_process(second, "user-token", "alice", expect=2)
    assert refused.stdout == ""
    (line,) = refused.stderr.splitlines()
    folder = elsewhere / "data" / "identity"
    assert line.startswith(f"shopcardd-backend: no development identity key in {folder}:")
    assert "`shopcardd-backend serve` makes it" in line and "SHOPCARDD_DATA_DIR" in line
    assert list(elsewhere.iterdir()) == [], "no data folder, no key made"
    assert (served / "identity").exists()


def test_user_token_says_which_key_and_folder_sign(env: dict[str, str]) -> None:
    make_identity_key(env)
    done = backend_in_process(env, "user-token", "alice")
    folder = Path(env["SHOPCARDD_DATA_DIR"]).absolute() / "identity"
    assert done.stderr == f"signing with the development identity key dev-identity in {folder}\n"
    assert len(done.stdout.split()) == 1


def test_serve_makes_the_identity_key_and_logs_where(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from shopcardd_backend.app import check_startup

    settings = build_settings(tmp_path / "data")
    with caplog.at_level("INFO", logger="shopcardd_backend.identity"):
        check_startup(settings)  # what `serve` runs before its workers start
        check_startup(settings)  # the second start finds it: made once, logged once
    made = [r for r in caplog.records if r.getMessage() == "made the development identity key"]
    assert len(made) == 1
    path = (tmp_path / "data" / "identity" / "dev-identity.private.pem").absolute()
    assert made[0].path == str(path) and path.exists()  # type: ignore[attr-defined]
