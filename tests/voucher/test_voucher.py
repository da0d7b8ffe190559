"""The voucher format: what a genuine voucher passes and what a forged one can never pass."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from signatures import es256_twin, is_high_s

from shopcardd_voucher import (
    ALGORITHMS,
    MAX_TIMESTAMP,
    MAX_TOKEN_LENGTH,
    MAX_VOUCHER_LIFETIME_SECONDS,
    KeySet,
    Reason,
    SigningKey,
    Voucher,
    is_valid_id,
    issue,
    sign,
    verify,
)

NOW = 1_800_000_000
MERCHANT = "m-cafe01"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module", params=ALGORITHMS)
def key(request: pytest.FixtureRequest) -> SigningKey:
    return SigningKey.generate("k1", request.param)


@pytest.fixture(scope="module")
def keys(key: SigningKey) -> KeySet:
    return KeySet([key.verification_key()])


@pytest.fixture(scope="module")
def token(key: SigningKey) -> str:
    return issue(key, deal="deal0001", merchant=MERCHANT, user="user0001", ttl=3600, now=NOW)


def check(token: str | bytes, keys: KeySet, now: float = NOW + 10, merchant: str | None = MERCHANT) -> Reason:
    return verify(token, keys, now=now, leeway=60, merchant=merchant).reason


def test_round_trip_gives_back_the_claims(key: SigningKey, keys: KeySet, token: str) -> None:
    verdict = verify(token, keys, now=NOW + 10, merchant=MERCHANT)
    assert verdict.reason is Reason.ACCEPTED and verdict.is_accepted
    voucher = verdict.voucher
    assert voucher is not None
    assert (voucher.deal, voucher.user, voucher.merchant, voucher.kid) == (
        "deal0001",
        "user0001",
        MERCHANT,
        "k1",
    )
    assert (voucher.issued_at, voucher.expires_at) == (NOW, NOW + 3600)
    assert len(unb64(voucher.voucher_id)) == 16  # 128 random bits


def test_header_names_alg_and_kid_only(key: SigningKey, token: str) -> None:
    header = json.loads(unb64(token.split(".")[0]))
    assert header == {"alg": key.alg, "kid": "k1"}
    claims = json.loads(unb64(token.split(".")[1]))
    assert set(claims) == {"jti", "deal", "sub", "mid", "iat", "exp"}


def test_round_trip_through_published_jwks(key: SigningKey, token: str) -> None:
    published = KeySet([key.verification_key()]).to_json()
    assert check(token, KeySet.from_jwks(published)) is Reason.ACCEPTED


def test_every_voucher_gets_its_own_id(key: SigningKey) -> None:
    ids = {
        verify(
            issue(key, deal="d", merchant="m", user="u", ttl=60, now=NOW),
            KeySet([key.verification_key()]),
            now=NOW,
        ).voucher.voucher_id  # type: ignore[union-attr]
        for _ in range(50)
    }
    assert len(ids) == 50


def test_expired_and_not_yet_valid_respect_the_leeway(key: SigningKey, keys: KeySet, token: str) -> None:
    assert check(token, keys, now=NOW + 3600 + 59) is Reason.ACCEPTED
    assert check(token, keys, now=NOW + 3600 + 60) is Reason.EXPIRED
    later = sign(key, Voucher("v1", "d1", "u1", MERCHANT, NOW, NOW + 600, not_before=NOW + 300))
    assert check(later, keys, now=NOW + 239) is Reason.NOT_YET_VALID
    assert check(later, keys, now=NOW + 240) is Reason.ACCEPTED


def test_wrong_merchant(keys: KeySet, token: str) -> None:
    assert check(token, keys, merchant="m-other") is Reason.WRONG_MERCHANT


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "hello",
        "a.b",
        "a.b.c.d",
        "..",
        "a.b.c",
        "ey.ey.ey",
        "\x00\x01.\x02.\x03",
        "é.é.é",
        b"\xff\xfe.a.b",
    ],
)
def test_garbage_is_bad_format(keys: KeySet, garbage: str | bytes) -> None:
    assert check(garbage, keys) is Reason.BAD_FORMAT


def test_oversized_input_is_bad_format_before_parsing(keys: KeySet, token: str) -> None:
    assert check(token + "A" * (MAX_TOKEN_LENGTH - len(token) + 1), keys) is Reason.BAD_FORMAT
    assert check("x" * 10_000_000, keys) is Reason.BAD_FORMAT
    assert check(b"\xff" * 10_000_000, keys) is Reason.BAD_FORMAT


DEEP_NESTING = b"[" * 2000
"""Deeper than Python's JSON parser recurses, yet short enough to pass the length check."""


def test_deeply_nested_header_is_bad_format_not_a_crash(keys: KeySet, token: str) -> None:
    _, payload, signature = token.split(".")
    nested = f"{b64(DEEP_NESTING)}.{payload}.{signature}"
    assert len(nested) <= MAX_TOKEN_LENGTH
    assert check(nested, keys) is Reason.BAD_FORMAT


def signed_claims(key: SigningKey, claims: bytes, alg: str | None = None) -> str:
    """A genuine signature by ``key`` (with ``alg``, default the key's own) over any claims,
    bypassing ``issue``: only the verifier's own checks can stop it."""
    alg = alg or key.alg
    signing_input = f"{b64(json.dumps({'alg': alg, 'kid': key.kid}).encode())}.{b64(claims)}"
    signature = jwt.get_algorithm_by_name(alg).sign(signing_input.encode(), key.private_key)
    return f"{signing_input}.{b64(signature)}"


GOOD_CLAIMS = {"jti": "v1", "deal": "d1", "sub": "u1", "mid": MERCHANT, "iat": NOW, "exp": NOW + 600}


@pytest.mark.parametrize(
    "claims",
    [
        json.dumps({k: v for k, v in GOOD_CLAIMS.items() if k != "exp"}).encode(),
        json.dumps({k: v for k, v in GOOD_CLAIMS.items() if k != "jti"}).encode(),
        json.dumps({**GOOD_CLAIMS, "iat": str(NOW)}).encode(),
        json.dumps({**GOOD_CLAIMS, "exp": NOW + 600.5}).encode(),
        json.dumps({**GOOD_CLAIMS, "exp": True}).encode(),
        json.dumps({**GOOD_CLAIMS, "nbf": "soon"}).encode(),
        json.dumps({**GOOD_CLAIMS, "sub": ""}).encode(),
        json.dumps({**GOOD_CLAIMS, "deal": 7}).encode(),
        json.dumps({**GOOD_CLAIMS, "mid": "m" * 65}).encode(),
        json.dumps(list(GOOD_CLAIMS)).encode(),
        b"not json",
        DEEP_NESTING,
    ],
    ids=lambda claims: claims[:24].decode(),
)
def test_genuinely_signed_but_malformed_claims_are_bad_format(
    key: SigningKey, keys: KeySet, claims: bytes
) -> None:
    assert check(signed_claims(key, json.dumps(GOOD_CLAIMS).encode()), keys) is Reason.ACCEPTED
    malformed = signed_claims(key, claims)
    assert len(malformed) <= MAX_TOKEN_LENGTH
    assert check(malformed, keys) is Reason.BAD_FORMAT


def test_token_with_crit_header_is_refused(key: SigningKey, keys: KeySet, token: str) -> None:
    header = b64(json.dumps({"alg": key.alg, "kid": "k1", "crit": ["exp"]}).encode())
    _, payload, signature = token.split(".")
    assert check(f"{header}.{payload}.{signature}", keys) is Reason.BAD_FORMAT


def test_unknown_kid_is_unknown_key(token: str) -> None:
    other = KeySet([SigningKey.generate("k2").verification_key()])
    assert check(token, other) is Reason.UNKNOWN_KEY


def test_a_voucher_signed_by_a_key_the_verifier_does_not_hold_is_refused(
    key: SigningKey, keys: KeySet
) -> None:
    for kid, reason in (("k9", Reason.UNKNOWN_KEY), ("k1", Reason.BAD_SIGNATURE)):
        stranger = SigningKey.generate(kid, key.alg)
        forged = issue(stranger, deal="deal0001", merchant=MERCHANT, user="user0001", ttl=3600, now=NOW)
        assert check(forged, keys) is reason


def test_same_kid_other_key_is_bad_signature(key: SigningKey, token: str) -> None:
    impostor = KeySet([SigningKey.generate("k1", key.alg).verification_key()])
    assert check(token, impostor) is Reason.BAD_SIGNATURE


def test_key_outside_its_signing_window_is_unknown_key(key: SigningKey, token: str) -> None:
    retired = KeySet([key.verification_key(expires=NOW - 1)])
    assert check(token, retired) is Reason.UNKNOWN_KEY
    not_yet = KeySet([key.verification_key(not_before=NOW + 1)])
    assert check(token, not_yet) is Reason.UNKNOWN_KEY
    rotating = KeySet([key.verification_key(not_before=NOW - 10, expires=NOW + 10)])
    assert check(token, rotating) is Reason.ACCEPTED


def test_several_live_keys_each_verify_their_own_vouchers() -> None:
    old, new = SigningKey.generate("2025-a", "RS256"), SigningKey.generate("2026-a")
    keys = KeySet([old.verification_key(expires=NOW), new.verification_key(not_before=NOW)])
    for signer, issued in ((old, NOW - 100), (new, NOW + 100)):
        token = issue(signer, deal="d", merchant=MERCHANT, user="u", ttl=3600, now=issued)
        assert check(token, keys, now=NOW + 200) is Reason.ACCEPTED


# --- algorithm confusion: the algorithm comes from the key, never from the token ---


def resigned(token: str, header: dict[str, str], signature: bytes) -> str:
    payload = token.split(".")[1]
    return f"{b64(json.dumps(header, separators=(',', ':')).encode())}.{payload}.{b64(signature)}"


def test_alg_none_is_refused(keys: KeySet, token: str) -> None:
    payload = token.split(".")[1]
    header = b64(b'{"alg":"none","kid":"k1"}')
    assert check(f"{header}.{payload}.", keys) is Reason.BAD_FORMAT
    assert check(f"{header}.{payload}.{b64(b'x')}", keys) is Reason.BAD_SIGNATURE


def test_hs256_with_the_public_key_as_secret_is_refused(key: SigningKey, keys: KeySet, token: str) -> None:
    public_pem = key.verification_key().public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk_secret = json.dumps(keys.to_jwks()["keys"][0]).encode()
    for secret in (public_pem, jwk_secret):
        header = b64(b'{"alg":"HS256","kid":"k1"}')
        payload = token.split(".")[1]
        mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        assert check(f"{header}.{payload}.{b64(mac)}", keys) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("alg", "other_alg"), [(a, b) for a in ALGORITHMS for b in ALGORITHMS if a != b], ids=lambda alg: alg
)
def test_switch_to_another_of_our_algorithms_is_refused(alg: str, other_alg: str) -> None:
    key = SigningKey.generate("k1", alg)  # type: ignore[arg-type]
    keys = KeySet([key.verification_key()])
    token = issue(key, deal="deal0001", merchant=MERCHANT, user="user0001", ttl=3600, now=NOW)
    attacker = SigningKey.generate("k1", other_alg)  # type: ignore[arg-type]
    forged = issue(attacker, deal="deal0001", merchant=MERCHANT, user="user0001", ttl=3600, now=NOW)
    assert check(forged, keys) is Reason.BAD_SIGNATURE
    # The genuine signature under a header that claims another algorithm.
    relabelled = resigned(token, {"alg": other_alg, "kid": "k1"}, unb64(token.split(".")[2]))
    assert check(relabelled, keys) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("other_alg", ["PS256", "RS512", "ES384", "ES512", "Ed25519", "Ed448", "eddsa"])
def test_relabelling_to_a_sibling_algorithm_is_refused(keys: KeySet, token: str, other_alg: str) -> None:
    """Algorithms a general JWT library would accept for the same key type (PS256 for an RSA key,
    ES384 for an EC key) are still not the key's algorithm."""
    relabelled = resigned(token, {"alg": other_alg, "kid": "k1"}, unb64(token.split(".")[2]))
    assert check(relabelled, keys) is Reason.BAD_SIGNATURE


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_changed_character_never_verifies(keys: KeySet, token: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(token) - 1), label="position")
    replacement = data.draw(
        st.characters(min_codepoint=0, max_codepoint=0x2FF).filter(lambda c: c != token[position]),
        label="replacement",
    )
    tampered = token[:position] + replacement + token[position + 1 :]
    assert check(tampered, keys) is not Reason.ACCEPTED


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_changed_byte_in_any_part_never_verifies(keys: KeySet, token: str, data: st.DataObject) -> None:
    parts = [unb64(p) for p in token.split(".")]
    which = data.draw(st.sampled_from(["header", "payload", "signature"]), label="part")
    index = ["header", "payload", "signature"].index(which)
    position = data.draw(st.integers(0, len(parts[index]) - 1), label="byte")
    change = data.draw(st.integers(1, 255), label="xor")  # any other value of that byte
    damaged = bytearray(parts[index])
    damaged[position] ^= change
    parts[index] = bytes(damaged)
    assert check(".".join(b64(p) for p in parts), keys) is not Reason.ACCEPTED


@pytest.mark.parametrize(
    ("alg", "sibling"),
    [("RS256", "PS256"), ("RS256", "RS512"), ("ES256", "ES384"), ("ES256", "ES512"), ("ES256", "ES256K")],
)
def test_the_genuine_key_signing_under_a_sibling_algorithm_is_refused(alg: str, sibling: str) -> None:
    """A general JWT library lets an RSA key sign PS256 or RS512 and a P-256 key sign ES384: a
    verifier that took the algorithm from the token would accept these. EdDSA has no sibling."""
    key = SigningKey.generate("k1", alg)  # type: ignore[arg-type]
    keys = KeySet([key.verification_key()])
    claims = json.dumps(GOOD_CLAIMS).encode()
    assert check(signed_claims(key, claims), keys) is Reason.ACCEPTED
    assert check(signed_claims(key, claims, sibling), keys) is Reason.BAD_SIGNATURE


def test_non_canonical_base64_spelling_of_the_signature_is_refused(keys: KeySet, token: str) -> None:
    # Ed25519 and P-256 signatures leave spare bits in the last base64url character:
    # a decoder that ignores them would accept two spellings of one token.
    header, payload, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for replacement in alphabet:
        if replacement != signature[-1]:
            variant = f"{header}.{payload}.{signature[:-1]}{replacement}"
            assert check(variant, keys) is not Reason.ACCEPTED


def test_whitespace_around_a_scanned_token_is_tolerated(keys: KeySet, token: str) -> None:
    assert check(f"  {token}\r\n", keys) is Reason.ACCEPTED


@pytest.mark.parametrize(("kid", "version"), [("k1", 12), ("k2026-01", 13), ("k2026-12-01-edsa", 13)])
def test_eddsa_voucher_fits_a_small_qr_code(kid: str, version: int) -> None:
    """Ids of 8 characters: 281 characters (QR version 12) with kid k1, 289 (version 13) with an
    8-character kid, 300 with the longest kid keygen allows (16); docs/performance.md's table shows
    the first."""
    from shopcardd_provision.qr import qr_version

    key = SigningKey.generate(kid)
    token = issue(key, deal="deal0001", merchant="merch001", user="user0001", ttl=86_400)
    assert len(token) <= 300
    assert qr_version(token) == version <= 13


@pytest.mark.parametrize(
    "bad", [{"ttl": 0}, {"ttl": -5}, {"deal": ""}, {"user": "a b"}, {"merchant": "x" * 65}]
)
def test_issue_refuses_bad_claims(bad: dict[str, object]) -> None:
    args: dict[str, object] = {"deal": "d", "merchant": "m", "user": "u", "ttl": 60, **bad}
    with pytest.raises(ValueError):
        issue(SigningKey.generate("k1"), **args)  # type: ignore[arg-type]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["alg", "kid", "crit", "jti", "exp"]), inner, max_size=4)
    ),
    max_leaves=10,
)
HEADERS = st.fixed_dictionaries(
    {}, optional={"alg": st.sampled_from([*ALGORITHMS, "none", "HS256"]) | JSON_VALUES, "kid": JSON_VALUES}
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    anything=st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300),
        st.tuples(HEADERS | JSON_VALUES, JSON_VALUES, st.binary(max_size=300)).map(
            lambda parts: ".".join(
                [b64(json.dumps(parts[0]).encode()), b64(json.dumps(parts[1]).encode()), b64(parts[2])]
            )
        ),
    )
)
def test_any_input_gets_a_reason_code_never_an_exception(keys: KeySet, anything: str | bytes) -> None:
    verdict = verify(anything, keys, merchant=MERCHANT)
    assert isinstance(verdict.reason, Reason) and not verdict.is_accepted


# --- hostile but genuinely signed: a leaked key, a malleated signature, claims made to break things ---


def test_a_retired_key_cannot_sign_a_voucher_that_outlives_its_window(key: SigningKey) -> None:
    """A key retired a year ago leaks: ``iat`` back-dated into its window no longer buys a voucher
    that lives for decades; ``exp - iat`` is bounded by the longest lifetime the API issues."""
    retired_at = NOW - 366 * 86_400
    keys = KeySet([key.verification_key(not_before=retired_at - 86_400, expires=retired_at)])
    back_dated = {**GOOD_CLAIMS, "iat": retired_at - 10, "exp": NOW + 50 * 366 * 86_400}
    verdict = verify(signed_claims(key, json.dumps(back_dated).encode()), keys, now=NOW, merchant=MERCHANT)
    assert verdict.reason is Reason.BAD_FORMAT and "366 days" in verdict.detail
    longest = {**back_dated, "exp": back_dated["iat"] + MAX_VOUCHER_LIFETIME_SECONDS}
    one_more = {**longest, "exp": longest["exp"] + 1}
    for claims, reason in ((longest, Reason.ACCEPTED), (one_more, Reason.BAD_FORMAT)):
        assert check(signed_claims(key, json.dumps(claims).encode()), keys, now=NOW - 86_400) is reason


def test_a_key_window_bounds_exp_as_well_as_iat(key: SigningKey) -> None:
    window = key.verification_key(not_before=NOW - 100, expires=NOW)
    assert window.signed_within_window(NOW, NOW + MAX_VOUCHER_LIFETIME_SECONDS)
    assert not window.signed_within_window(NOW, NOW + MAX_VOUCHER_LIFETIME_SECONDS + 1)
    assert not window.signed_within_window(NOW + 1)
    assert key.verification_key().signed_within_window(NOW, NOW + 10**9)  # no window: no bound here


def test_the_api_caps_a_deal_s_voucher_lifetime_at_the_verifier_s_bound() -> None:
    pytest.importorskip("fastapi")
    from shopcardd_backend.api.models import DealCreate

    (limit,) = [m.le for m in DealCreate.model_fields["voucher_ttl_seconds"].metadata if hasattr(m, "le")]
    assert limit == MAX_VOUCHER_LIFETIME_SECONDS


def test_both_spellings_of_an_es256_signature_verify_and_sign_makes_the_low_s_one() -> None:
    """(r, s) and (r, n - s) are both valid ECDSA signatures and RFC 7518 prefers neither: the
    verifier takes both (a voucher is its ``jti``; the ledger refuses the second spelling of a
    redeemed one), and ``sign`` makes the low-S one."""
    key = SigningKey.generate("k1", "ES256")
    keys = KeySet([key.verification_key()])
    for n in range(40):  # the signature is random: both halves of s come up
        token = issue(key, deal=f"d{n}", merchant=MERCHANT, user="u1", ttl=3600, now=NOW)
        assert not is_high_s(token), "sign makes low-S signatures only"
        twin = es256_twin(token)
        assert is_high_s(twin)
        assert verify(twin, keys, now=NOW + 10, merchant=MERCHANT) == verify(
            token, keys, now=NOW + 10, merchant=MERCHANT
        )
        assert check(twin, keys) is Reason.ACCEPTED


def test_es256_vouchers_signed_by_another_jose_library_are_accepted_fifty_in_a_row() -> None:
    """joserfc signs ES256 as RFC 7518 says, without choosing a half for s: about half of its
    signatures are high-S, and every one of them is a genuine voucher."""
    from joserfc import jwt as joserfc_jwt
    from joserfc.jwk import ECKey

    key = SigningKey.generate("k-es", "ES256")
    keys = KeySet([key.verification_key()])
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    their_key = ECKey.import_key(pem)
    claims = {"deal": "deal0001", "sub": "user0001", "mid": MERCHANT, "iat": NOW, "exp": NOW + 3600}
    tokens = [
        joserfc_jwt.encode({"alg": "ES256", "kid": "k-es"}, {"jti": f"v{n:04}", **claims}, their_key)
        for n in range(50)
    ]
    verdicts = [verify(token, keys, now=NOW + 10, merchant=MERCHANT) for token in tokens]
    assert [v.reason for v in verdicts] == [Reason.ACCEPTED] * 50, [v.detail for v in verdicts]
    assert [v.voucher.voucher_id for v in verdicts if v.voucher] == [f"v{n:04}" for n in range(50)]
    assert any(is_high_s(token) for token in tokens), "some were high-S (each is with odds 1/2)"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("exp", 2**63),
        ("exp", 2**64 + 5),
        ("exp", -1),
        ("iat", -(2**63) - 1),
        ("nbf", 2**63),
        ("exp", MAX_TIMESTAMP + 1),
    ],
)
def test_a_genuine_voucher_with_an_out_of_range_time_is_bad_format(
    key: SigningKey, keys: KeySet, name: str, value: int
) -> None:
    token = signed_claims(key, json.dumps({**GOOD_CLAIMS, name: value}).encode())
    verdict = verify(token, keys, now=NOW, merchant=MERCHANT)
    assert verdict.reason is Reason.BAD_FORMAT and verdict.voucher is None
    assert verdict.detail.isprintable()


HOSTILE_IDS = [
    "v1\x1b[2J\x1b[31mACCEPTED",  # terminal escapes
    "d1\x07",  # the bell
    "d1\nlog line",  # a forged log line
    "v1\u202egnp.exe",  # right-to-left override
    "u1\u200b",  # zero-width space
    "u1\u3164",  # Hangul filler: a letter that draws as nothing
    "u1\ud800",  # a lone surrogate
    "u1\U000e0041",  # a tag character
    "u1\ue000",  # private use
    "u1\u0378",  # unassigned
    "cafe\u0301",  # not NFC (e + combining acute)
    "a b",
]


@pytest.mark.parametrize("claim", ["jti", "deal", "sub", "mid"])
@pytest.mark.parametrize("value", HOSTILE_IDS, ids=ascii)
def test_a_genuine_voucher_with_hostile_characters_in_an_id_is_bad_format(
    key: SigningKey, claim: str, value: str
) -> None:
    keys = KeySet([key.verification_key()])
    claims = json.dumps({**GOOD_CLAIMS, claim: value})  # ensure_ascii: even a lone surrogate travels
    verdict = verify(signed_claims(key, claims.encode()), keys, now=NOW, merchant=None)
    assert verdict.reason is Reason.BAD_FORMAT and verdict.voucher is None
    assert verdict.detail.isprintable() and value not in verdict.detail


@pytest.mark.parametrize("value", ["caf\u00e9", "Zoë-42", "ユーザー1", "مستخدم"])
def test_ids_in_any_script_still_pass(key: SigningKey, value: str) -> None:
    assert is_valid_id(value)
    token = issue(key, deal="d1", merchant=MERCHANT, user=value, ttl=60, now=NOW)
    assert check(token, KeySet([key.verification_key()]), now=NOW) is Reason.ACCEPTED
