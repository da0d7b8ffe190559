"""Ed25519 through libsodium (PyNaCl): the claim path's two signatures at twice the speed.

A claim whose user token no process has seen checks that token's signature, and every issued
claim signs its voucher: on the development identity key and the default voucher key both are
Ed25519. On the bench machine libsodium checks a signature in 54 us and makes one in 20 us,
where OpenSSL (through ``cryptography``) takes 105 to 122 us and 32 to 40 us: the check alone
was a third of a cold claim's CPU. Ed25519 is deterministic (RFC 8032), so libsodium signs the
same bytes to the same signature as OpenSSL: a voucher signed here is, byte for byte, the token
``shopcardd_voucher.sign`` makes (``tests/backend/test_ed25519.py``). Keys of any other algorithm
(ES256, RS256, Ed448) get ``None`` here and keep PyJWT's algorithm objects.

The key decides: these are made from a key, never from a token's ``alg``.
"""

from __future__ import annotations

from collections.abc import Callable

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

Signs = Callable[[bytes], bytes]
"""The signature of the given bytes."""
Verifies = Callable[[bytes, bytes], bool]
"""Whether the signature (second) is the key's over the message (first)."""


def signer_of(private_key: object) -> Signs | None:
    """libsodium's signing with an Ed25519 private key; None for a key of another kind."""
    if not isinstance(private_key, ed25519.Ed25519PrivateKey):
        return None
    seed = private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    key = nacl.signing.SigningKey(seed)

    def signs(message: bytes) -> bytes:
        return key.sign(message).signature

    return signs


def verifier_of(public_key: object) -> Verifies | None:
    """libsodium's check with an Ed25519 public key; None for a key of another kind."""
    if not isinstance(public_key, ed25519.Ed25519PublicKey):
        return None
    key = nacl.signing.VerifyKey(
        public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )

    def verifies(message: bytes, signature: bytes) -> bool:
        if len(signature) != 64:
            return False
        try:
            key.verify(message, signature)
        except nacl.exceptions.BadSignatureError:
            return False
        return True

    return verifies
