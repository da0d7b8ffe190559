"""ES256's second spelling, for tests on either side of the verifier (voucher and counter)."""

from __future__ import annotations

import base64

from shopcardd_voucher.voucher import P256_ORDER


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signature_s(token: str) -> int:
    """The ``s`` of an ES256 token's raw ``r || s`` signature."""
    signature = token.split(".")[2]
    return int.from_bytes(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))[32:], "big")


def is_high_s(token: str) -> bool:
    return signature_s(token) > P256_ORDER // 2


def es256_twin(token: str) -> str:
    """The same token with the other valid ECDSA signature of its claims, (r, n - s) for (r, s):
    what anyone holding a voucher can write without any key."""
    head, payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    twin = raw[:32] + (P256_ORDER - int.from_bytes(raw[32:], "big")).to_bytes(32, "big")
    return f"{head}.{payload}.{_b64(twin)}"
