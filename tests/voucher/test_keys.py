"""Key sets as they travel to devices: JWKS in, JWKS out, nothing private, nothing half-loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shopcardd_voucher import ALGORITHMS, InvalidKeyError, KeySet, SigningKey
from shopcardd_voucher.keys import PRIVATE_MEMBERS


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_jwks_round_trip_keeps_kid_alg_and_window(alg: str) -> None:
    key = SigningKey.generate("k-" + alg, alg)  # type: ignore[arg-type]
    published = KeySet([key.verification_key(not_before=100, expires=200)]).to_jwks()
    (jwk,) = published["keys"]
    assert (jwk["kid"], jwk["alg"], jwk["nbf"], jwk["exp"]) == ("k-" + alg, alg, 100, 200)
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk), "a published key set holds no private material"
    (loaded,) = KeySet.from_jwks(json.dumps(published))
    assert (loaded.kid, loaded.alg, loaded.not_before, loaded.expires) == ("k-" + alg, alg, 100, 200)


def test_pem_round_trip_keeps_the_key() -> None:
    key = SigningKey.generate("k1", "ES256")
    again = SigningKey.from_pem("k1", key.to_pem())
    assert again.alg == "ES256"
    assert again.verification_key().to_jwk() == key.verification_key().to_jwk()


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ("not json", "not valid JSON"),
        ("[]", '"keys" list'),
        ('{"keys": [{"kty": "OKP"}]}', "needs a kid"),
        ('{"keys": [{"kid": "a", "alg": "HS256", "kty": "oct", "k": "c2VjcmV0"}]}', "alg must be one of"),
        ('{"keys": [{"kid": "a", "alg": "none"}]}', "alg must be one of"),
        ('{"keys": [{"kid": "a", "alg": "EdDSA", "kty": "OKP", "crv": "Ed25519", "x": "!!"}]}', "key 'a'"),
        (
            '{"keys": [{"kid": "a", "alg": "EdDSA", "kty": "OKP", "crv": "Ed25519", "x": "AA", '
            '"exp": "soon"}]}',
            "key 'a'",
        ),
    ],
)
def test_broken_key_sets_are_refused_with_a_reason(document: str, says: str) -> None:
    with pytest.raises(InvalidKeyError, match=says):
        KeySet.from_jwks(document)


def test_a_key_set_that_declares_the_wrong_alg_for_its_key_is_refused() -> None:
    jwk = SigningKey.generate("k1", "ES256").verification_key().to_jwk()
    with pytest.raises(InvalidKeyError):
        KeySet.from_jwks({"keys": [{**jwk, "alg": "RS256"}]})


def test_a_private_key_in_a_key_set_is_refused() -> None:
    from jwt.algorithms import OKPAlgorithm

    key = SigningKey.generate("k1")
    private_jwk = {**OKPAlgorithm.to_jwk(key.private_key, as_dict=True), "kid": "k1", "alg": "EdDSA"}
    with pytest.raises(InvalidKeyError, match="private"):
        KeySet.from_jwks({"keys": [private_jwk]})


def test_two_different_keys_under_one_kid_are_refused() -> None:
    first, second = SigningKey.generate("k1"), SigningKey.generate("k1")
    with pytest.raises(InvalidKeyError, match="already"):
        KeySet([first.verification_key(), second.verification_key()])


def test_weak_keys_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    with pytest.raises(InvalidKeyError, match="2048"):
        SigningKey("k1", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(InvalidKeyError, match="P-256"):
        SigningKey("k1", ec.generate_private_key(ec.SECP384R1()))


def test_a_key_set_file_that_is_not_text_is_refused_with_a_reason(tmp_path: Path) -> None:
    image = tmp_path / "voucher.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(InvalidKeyError, match="not a JSON text file"):
        KeySet.load(image)
    with pytest.raises(InvalidKeyError, match="cannot read key set"):
        KeySet.load(tmp_path / "missing.json")


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_published_key_has_the_same_members(alg: str) -> None:
    jwk = SigningKey.generate("k1", alg).verification_key().to_jwk()  # type: ignore[arg-type]
    assert {"kid", "alg", "use", "kty"} <= set(jwk) and "key_ops" not in jwk


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("member", sorted(PRIVATE_MEMBERS))
def test_any_private_member_in_a_key_set_is_refused_whatever_the_key_type(alg: str, member: str) -> None:
    """An RSA key with only q, dp, dq or qi (no d, no p) still carries its private key: refused, as
    is any private member put beside a public key of another type."""
    public = SigningKey.generate("k1", alg).verification_key().to_jwk()  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError, match=f"private material \\({member}\\)"):
        KeySet.from_jwks({"keys": [{**public, member: "AQAB"}]})


def test_an_rsa_private_key_without_d_and_p_is_refused() -> None:
    from jwt.algorithms import RSAAlgorithm

    key = SigningKey.generate("k1", "RS256")
    private = {**RSAAlgorithm.to_jwk(key.private_key, as_dict=True), "kid": "k1", "alg": "RS256"}
    rsa_private = {"d", "p", "q", "dp", "dq", "qi"}
    for shown in ({"q", "dp", "dq", "qi"}, {"q"}, {"qi"}):
        jwk = {name: value for name, value in private.items() if name not in rsa_private - shown}
        with pytest.raises(InvalidKeyError, match="private material"):
            KeySet.from_jwks({"keys": [jwk]})
