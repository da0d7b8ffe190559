"""The claim path's Ed25519 through libsodium: the same signatures as OpenSSL's, the same refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

from shopcardd_backend.ed25519 import signer_of, verifier_of
from shopcardd_backend.signing import load_signer
from shopcardd_voucher import KeySet, Reason, SigningKey, Voucher, sign, verify


def test_a_voucher_signed_through_libsodium_is_the_token_openssl_signs(tmp_path: Path) -> None:
    signer = load_signer(tmp_path / "keys")  # EdDSA by default
    keys = KeySet([signer.key.verification_key()])
    for n in range(50):
        voucher = Voucher(f"v{n}", "deal-1", f"user-{n}", "m1", 1_800_000_000 + n, 1_800_086_400, kid="k")
        token = signer.sign(voucher)
        assert token == sign(signer.key, voucher), "Ed25519 is deterministic: one key, one signature"
        assert verify(token, keys, merchant="m1", now=1_800_000_100).reason is Reason.ACCEPTED


def test_libsodium_accepts_what_openssl_signs_and_refuses_every_change() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    verifies = verifier_of(private.public_key())
    assert verifies is not None
    for size in (0, 1, 200, 4096):
        message = os.urandom(size)
        signature = private.sign(message)
        assert verifies(message, signature)
        assert not verifies(message + b"x", signature)
        flipped = bytes([signature[0] ^ 1]) + signature[1:]
        assert not verifies(message, flipped)
        assert not verifies(message, signature[:-1]), "a short signature is refused, not an error"
        assert not verifies(message, signature + b"\0")
        assert not verifies(message, ed25519.Ed25519PrivateKey.generate().sign(message)), "another key"


def test_libsodium_signs_as_openssl_does() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    signs = signer_of(private)
    assert signs is not None
    message = os.urandom(300)
    assert signs(message) == private.sign(message)


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_keys_of_other_algorithms_keep_pyjwt_s_own(alg: str) -> None:
    key = SigningKey.generate("k", alg)  # type: ignore[arg-type]
    assert signer_of(key.private_key) is None
    assert verifier_of(key.private_key.public_key()) is None


def test_an_ed448_key_is_not_taken_for_an_ed25519_one() -> None:
    private = ed448.Ed448PrivateKey.generate()
    assert signer_of(private) is None
    assert verifier_of(private.public_key()) is None
