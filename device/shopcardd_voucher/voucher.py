"""Sign and verify vouchers: compact JWS tokens that a counter checks offline.

Framing is done here rather than through ``jwt.decode`` for three reasons the counter
cares about: the algorithm must come from the key (looked up by ``kid``), never from the
token; every base64url segment must be canonical (a changed character can never still
verify); and time is judged against the clock the caller trusts, which on a Pi is not always
the system clock. The cryptography itself is pyjwt's algorithm objects over ``cryptography``.

Every valid signature of the key's algorithm is accepted, as RFC 7518 says: an ES256 voucher
signed by any JOSE library verifies, whichever of its two ECDSA spellings (r, s) and (r, n - s)
that library made. A voucher is its ``jti``, so the second spelling of a redeemed voucher is
``already_redeemed``: signature malleability gains nothing. ``sign`` still makes the low-S one.
"""

from __future__ import annotations

import binascii
import json
import secrets
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from functools import cache
from typing import Any, Final

import jwt
from jwt.algorithms import Algorithm as JWTAlgorithm
from jwt.utils import base64url_decode, base64url_encode

from .keys import KeySet, SigningKey, VerificationKey
from .limits import MAX_TIMESTAMP, MAX_VOUCHER_LIFETIME_SECONDS
from .reasons import Reason

MAX_TOKEN_LENGTH: Final = 4096
"""Longer input is ``bad_format`` before any parsing: a QR code cannot hold more anyway."""

MAX_ID_LENGTH: Final = 64
ID_RULE: Final = (
    f"1 to {MAX_ID_LENGTH} characters in Unicode NFC, none of them whitespace, control, format "
    "(invisible or bidirectional), surrogate, private-use or unassigned"
)
"""What ``jti``, ``deal``, ``sub`` and ``mid`` may be: text that shows as what it is, on a terminal,
in a log and in the merchant's audit, and that has one spelling only."""
DEFAULT_LEEWAY_SECONDS: Final = 60
P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
"""n of the P-256 curve: an ECDSA signature (r, s) also verifies as (r, n - s), and both are valid."""

_INVISIBLE: Final = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip
"""Unicode's Default_Ignorable_Code_Point ranges: drawn as nothing, whatever their category (a
Hangul filler is a letter, a variation selector a mark)."""
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


@cache
def _algorithm(name: str) -> JWTAlgorithm:
    return jwt.get_algorithm_by_name(name)


@dataclass(frozen=True, slots=True)
class Voucher:
    """The claims of a voucher whose signature verified."""

    voucher_id: str
    deal: str
    user: str
    merchant: str
    issued_at: int
    expires_at: int
    not_before: int | None = None
    kid: str = ""

    def to_claims(self) -> dict[str, Any]:
        """The JWT claims, short names in a fixed order (every byte makes the QR denser)."""
        claims: dict[str, Any] = {
            "jti": self.voucher_id,
            "deal": self.deal,
            "sub": self.user,
            "mid": self.merchant,
            "iat": self.issued_at,
        }
        if self.not_before is not None:
            claims["nbf"] = self.not_before
        claims["exp"] = self.expires_at
        return claims


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking one token: a reason code, and the voucher when it was genuine."""

    reason: Reason
    voucher: Voucher | None = None
    detail: str = ""

    @property
    def is_accepted(self) -> bool:
        return self.reason is Reason.ACCEPTED


def new_voucher_id() -> str:
    """128 random bits, base64url without padding (22 characters)."""
    return base64url_encode(secrets.token_bytes(16)).decode()


def is_valid_id(value: object) -> bool:
    """Whether ``value`` can be a voucher's ``jti``, ``deal``, ``sub`` or ``mid`` (``ID_RULE``)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        return False
    if value.isascii():  # the common case, and the fast one: printable ASCII but the space
        return value.isprintable() and " " not in value
    return unicodedata.is_normalized("NFC", value) and not any(
        unicodedata.category(ch) in _REFUSED_CATEGORIES
        or any(low <= ord(ch) <= high for low, high in _INVISIBLE)
        for ch in value
    )


def _check_id(name: str, value: str) -> str:
    if not is_valid_id(value):
        raise ValueError(f"{name} must be {ID_RULE}")
    return value


def low_s(signature: bytes) -> bytes:
    """The one ECDSA signature of the pair (r, s), (r, n - s) that has s in the lower half."""
    s = int.from_bytes(signature[32:], "big")
    return signature if s <= P256_ORDER // 2 else signature[:32] + (P256_ORDER - s).to_bytes(32, "big")


_COMPACT_JSON: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
"""Made once: ``json.dumps`` with options builds an encoder on every call."""


def _compact_json(value: dict[str, Any]) -> bytes:
    return _COMPACT_JSON.encode(value).encode()


@cache
def _header_segment(alg: str, kid: str) -> bytes:
    return base64url_encode(_compact_json({"alg": alg, "kid": kid}))


def issue(
    key: SigningKey,
    *,
    deal: str,
    merchant: str,
    user: str,
    ttl: int,
    now: float | None = None,
    not_before: int | None = None,
    voucher_id: str | None = None,
) -> str:
    """Sign a new voucher valid for ``ttl`` seconds and return the compact token."""
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= MAX_VOUCHER_LIFETIME_SECONDS:
        raise ValueError(
            f"ttl must be a whole number of seconds from 1 to {MAX_VOUCHER_LIFETIME_SECONDS} (366 days)"
        )
    issued_at = int(time.time() if now is None else now)
    voucher = Voucher(
        voucher_id=_check_id("voucher id", voucher_id or new_voucher_id()),
        deal=_check_id("deal", deal),
        user=_check_id("user", user),
        merchant=_check_id("merchant", merchant),
        issued_at=issued_at,
        expires_at=issued_at + ttl,
        not_before=not_before,
        kid=key.kid,
    )
    return sign(key, voucher)


def sign(key: SigningKey, voucher: Voucher, signs: Callable[[bytes], bytes] | None = None) -> str:
    """Sign already-built voucher claims (the backend builds them inside its claim step)."""
    return sign_compact(key, voucher.to_claims(), signs)


def sign_compact(
    key: SigningKey, payload: dict[str, Any], signs: Callable[[bytes], bytes] | None = None
) -> str:
    """A compact JWS of ``payload`` with the header ``{"alg", "kid"}`` of ``key``: a voucher, and
    the shop LAN's messages (``shopcardd_device.gossip``). ``signs``: another implementation of
    the key's own signature (the backend's libsodium Ed25519), else PyJWT's algorithm object."""
    signing_input = _header_segment(key.alg, key.kid) + b"." + base64url_encode(_compact_json(payload))
    if signs is None:
        signature = _algorithm(key.alg).sign(signing_input, key.private_key)
    else:
        signature = signs(signing_input)
    if key.alg == "ES256":
        signature = low_s(signature)  # one spelling of our own; the verifier takes both
    return (signing_input + b"." + base64url_encode(signature)).decode("ascii")


@dataclass(frozen=True, slots=True)
class CompactJws:
    """A compact JWS taken apart, nothing verified yet (``parse_compact``)."""

    header: dict[str, Any]
    signing_input: bytes
    signature: bytes
    payload_segment: str

    @property
    def kid(self) -> str:
        return str(self.header["kid"])

    @property
    def alg(self) -> str:
        return str(self.header["alg"])

    def payload(self) -> dict[str, Any]:
        """The payload's JSON object (read only once the signature was checked); ``ValueError``."""
        return _json_object(canonical_segment(self.payload_segment))


def parse_compact(text: str) -> CompactJws:
    """Three canonical base64url segments whose header is a JSON object with string ``alg`` and
    ``kid`` and no ``crit``: what a voucher and a shop-LAN message both are. ``ValueError``
    (saying which rule) for anything else; the payload is left for after the signature."""
    parts = text.split(".")
    if len(parts) != 3 or not all(parts):
        raise ValueError("not a compact JWS (three dot-separated parts)")
    try:
        header = _json_object(canonical_segment(parts[0]))
        signature = canonical_segment(parts[2])
    except (ValueError, UnicodeError, binascii.Error):
        raise ValueError("header or signature is not canonical base64url JSON") from None
    if not isinstance(header.get("kid"), str) or not isinstance(header.get("alg"), str) or "crit" in header:
        raise ValueError("header needs string alg and kid, and no crit")
    return CompactJws(header, f"{parts[0]}.{parts[1]}".encode("ascii"), signature, parts[1])


def signature_matches(jws: CompactJws, key: VerificationKey) -> bool:
    """Whether ``key`` made the signature, by the key's algorithm (the header's ``alg`` must
    name it: no token chooses how it is checked)."""
    if jws.alg != key.alg:
        return False
    try:
        return bool(_algorithm(key.alg).verify(jws.signing_input, key.public_key, jws.signature))
    except (ValueError, TypeError):
        return False


def canonical_segment(text: str) -> bytes:
    """Decode one base64url segment, refusing any spelling but the canonical one."""
    raw = text.encode("ascii")
    decoded = base64url_decode(raw)
    if base64url_encode(decoded) != raw:
        raise ValueError("non-canonical base64url")
    return decoded


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except RecursionError:  # "[[[[..." a few thousand deep: bad input, not a crash
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _int_claim(claims: dict[str, Any], name: str, required: bool = True) -> int | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TIMESTAMP:
        raise ValueError(f"claim {name} must be an integer timestamp from 0 to {MAX_TIMESTAMP}")
    return value


def _str_claim(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not is_valid_id(value):
        raise ValueError(f"claim {name} must be {ID_RULE}")
    return value


def _claims_voucher(claims: dict[str, Any], kid: str) -> Voucher:
    """The voucher the claims describe, every claim range- and character-checked; ``ValueError``."""
    voucher = Voucher(
        voucher_id=_str_claim(claims, "jti"),
        deal=_str_claim(claims, "deal"),
        user=_str_claim(claims, "sub"),
        merchant=_str_claim(claims, "mid"),
        issued_at=_int_claim(claims, "iat"),  # type: ignore[arg-type]
        expires_at=_int_claim(claims, "exp"),  # type: ignore[arg-type]
        not_before=_int_claim(claims, "nbf", required=False),
        kid=kid,
    )
    if not 0 < voucher.expires_at - voucher.issued_at <= MAX_VOUCHER_LIFETIME_SECONDS:
        raise ValueError(f"exp must come 1 to {MAX_VOUCHER_LIFETIME_SECONDS} seconds (366 days) after iat")
    return voucher


def verify(
    token: str | bytes,
    keys: KeySet,
    *,
    now: float | None = None,
    leeway: float = DEFAULT_LEEWAY_SECONDS,
    merchant: str | None = None,
) -> Verdict:
    """Check a token against the trusted ``keys``; never raises for bad input.

    Checks run from cheap to costly, and the first failure is the verdict: format, key,
    signature, claims, key window, merchant (when given), then ``nbf``/``exp`` against
    ``now`` (the system clock when None) with ``leeway`` seconds of grace.
    Revocation and "already redeemed" are the device's to judge; they need its ledger.
    """
    if not isinstance(token, str | bytes) or len(token) > MAX_TOKEN_LENGTH:
        return Verdict(Reason.BAD_FORMAT, detail=f"not a string of at most {MAX_TOKEN_LENGTH} characters")
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            return Verdict(Reason.BAD_FORMAT, detail="not ASCII")
    token = token.strip()
    if not token.isascii():
        return Verdict(Reason.BAD_FORMAT, detail="not ASCII")
    try:
        jws = parse_compact(token)
    except ValueError as exc:
        return Verdict(Reason.BAD_FORMAT, detail=str(exc))
    kid, alg = jws.kid, jws.alg
    key = keys.get(kid)
    if key is None:
        return Verdict(Reason.UNKNOWN_KEY, detail=f"no key {kid!r} in the key set")
    if alg != key.alg:
        return Verdict(Reason.BAD_SIGNATURE, detail=f"token says {alg!r} but key {kid!r} is {key.alg}")
    if not signature_matches(jws, key):
        return Verdict(Reason.BAD_SIGNATURE, detail="signature does not match")
    try:
        voucher = _claims_voucher(jws.payload(), kid)
    except (ValueError, UnicodeError, binascii.Error) as exc:
        return Verdict(Reason.BAD_FORMAT, detail=f"claims: {exc}")
    if not key.signed_within_window(voucher.issued_at, voucher.expires_at):
        return Verdict(Reason.UNKNOWN_KEY, voucher, f"key {kid!r} was not valid when this was issued")
    if merchant is not None and voucher.merchant != merchant:
        return Verdict(Reason.WRONG_MERCHANT, voucher, f"for merchant {voucher.merchant!r}")
    return check_time(voucher, time.time() if now is None else now, leeway)


def check_time(
    voucher: Voucher, now: float, leeway: float = DEFAULT_LEEWAY_SECONDS, tz: tzinfo | None = None
) -> Verdict:
    """Judge ``nbf``/``exp`` against a clock the caller trusts; the detail gives the time in ``tz``
    (the system's local time zone when ``None``), as the person at the counter reads it."""
    if voucher.not_before is not None and now + leeway < voucher.not_before:
        return Verdict(Reason.NOT_YET_VALID, voucher, f"valid from {readable_time(voucher.not_before, tz)}")
    if now - leeway >= voucher.expires_at:
        return Verdict(Reason.EXPIRED, voucher, f"expired at {readable_time(voucher.expires_at, tz)}")
    return Verdict(Reason.ACCEPTED, voucher)


def readable_time(moment: float, tz: tzinfo | None = None) -> str:
    """``2026-12-02 14:03:05 CET``: a moment in ``tz`` (``None``: the system's local time zone)."""
    local = datetime.fromtimestamp(moment, tz).astimezone(tz)  # tz None: naive local, then made aware
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or local.strftime("%z"))


def rfc3339_time(moment: float) -> str:
    """``2026-12-01T13:05:09.123Z``: a moment as the API and the device's machine-read output
    give it (UTC, milliseconds), for a program, where ``readable_time`` is for a person."""
    millis = int(moment * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{millis:03d}Z"
