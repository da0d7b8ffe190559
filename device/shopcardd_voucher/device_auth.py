"""Device keys and device tokens: how a counter proves to the backend which device it is.

Both sides import this one module: the counter makes the token (``make_device_token``), the
backend reads it (``read_device_token``), ``shopcardd-provision enroll`` makes the key pair and
its public JWK. It lives beside the voucher format because every part installs that package and
it pulls in no backend library (pyjwt and cryptography only).

A device key is Ed25519, nothing else: one algorithm, so no token can pick another. A device
token is a short-lived JWT signed with it:

- header ``{"alg": "EdDSA", "kid": DEVICE_ID, "typ": "JWT"}``;
- claims ``sub`` (the device id again), ``aud`` (the backend's audience: by default the
  ``backend_url`` the device syncs with, without a trailing ``/``), ``iat``, ``exp`` (at most
  ``MAX_DEVICE_TOKEN_SECONDS`` after ``iat``) and ``jti`` (128 random bits, used once).

One token per request: the backend remembers every ``jti`` until the token expires and refuses
it a second time.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.algorithms import OKPAlgorithm
from jwt.utils import base64url_decode, base64url_encode

from .keys import InvalidKeyError, SigningKey

DEVICE_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
DEVICE_ID_RULE: Final = "1 to 64 letters, digits, '.', '_' or '-'"
"""A device id: it names the device's key and files, and goes into every token it signs."""
DEVICE_TOKEN_SECONDS: Final = 300
"""Lifetime of the tokens ``make_device_token`` makes: long enough for a slow upload."""
MAX_DEVICE_TOKEN_SECONDS: Final = 600
"""The longest lifetime (``exp - iat``) the backend accepts: a stolen token is soon worthless."""
DEVICE_TOKEN_LEEWAY_SECONDS: Final = 60
"""Clock skew tolerated between a counter and the backend (a Pi's clock may lag after boot)."""
PUBLIC_MEMBERS: Final = frozenset({"kty", "crv", "x", "kid", "alg", "use"})
"""The members a device's public JWK may hold; any other (``d`` above all) is refused."""


class DeviceTokenError(ValueError):
    """A device token or device key that cannot be accepted; ``str(exc)`` says why."""


def public_jwk(key: SigningKey) -> dict[str, str]:
    """The public JWK of a device key, as enrolment sends it (``kty``, ``crv``, ``x``)."""
    if key.alg != "EdDSA":
        raise InvalidKeyError(f"a device key is Ed25519 (EdDSA), not {key.alg}")
    jwk = OKPAlgorithm.to_jwk(key.private_key.public_key(), as_dict=True)
    return {"kty": "OKP", "crv": "Ed25519", "x": jwk["x"]}


def parse_public_jwk(jwk: Any) -> ed25519.Ed25519PublicKey:
    """The Ed25519 public key of a device JWK; ``DeviceTokenError`` for anything else (another
    key type or curve, private members, a malformed ``x``)."""
    if not isinstance(jwk, dict):
        raise DeviceTokenError("public_key must be a JWK (a JSON object)")
    stray = sorted(set(jwk) - PUBLIC_MEMBERS)
    if "d" in jwk:
        raise DeviceTokenError("public_key holds the private key (member d): send the public half only")
    if stray:
        raise DeviceTokenError(f"public_key has members a public Ed25519 JWK does not have: {stray}")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise DeviceTokenError(
            'public_key must be an Ed25519 key: {"kty": "OKP", "crv": "Ed25519", "x": ...}'
        )
    if jwk.get("alg", "EdDSA") != "EdDSA" or jwk.get("use", "sig") != "sig":
        raise DeviceTokenError('public_key: alg must be "EdDSA" and use "sig" when given')
    x = jwk.get("x")
    try:
        raw = base64url_decode(x.encode("ascii")) if isinstance(x, str) else b""
        canonical = isinstance(x, str) and base64url_encode(raw).decode() == x
    except (ValueError, UnicodeEncodeError):
        raw, canonical = b"", False
    if len(raw) != 32 or not canonical:
        raise DeviceTokenError("public_key: x must be the 32-byte Ed25519 public key, base64url")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def make_device_token(
    key: SigningKey,
    audience: str,
    *,
    now: float | None = None,
    lifetime: int = DEVICE_TOKEN_SECONDS,
    token_id: str | None = None,
) -> str:
    """A bearer token for one request to the backend, signed by the device key; ``key.kid`` is
    the device id (``SigningKey.load(DEVICE_ID, PATH)``)."""
    if key.alg != "EdDSA":
        raise InvalidKeyError(f"a device key is Ed25519 (EdDSA), not {key.alg}")
    if not 0 < lifetime <= MAX_DEVICE_TOKEN_SECONDS:
        raise ValueError(f"lifetime must be 1 to {MAX_DEVICE_TOKEN_SECONDS} seconds")
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": key.kid,
        "aud": audience,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": token_id or secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, key.private_key, algorithm="EdDSA", headers={"kid": key.kid, "typ": "JWT"})


def device_of_token(token: str) -> str:
    """The device id a token claims to come from (its header's ``kid``), unverified: which
    enrolled key to check it with. ``DeviceTokenError`` when it is no JWT with a usable kid."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise DeviceTokenError("the device token is not a well-formed JWT") from None
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > 64:
        raise DeviceTokenError("the device token's header has no kid naming the device")
    return kid


@dataclass(frozen=True, slots=True)
class DeviceClaims:
    """What a verified device token says: which device, which token, until when."""

    device_id: str
    token_id: str
    expires_at: int


_FAULTS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.InvalidSignatureError, "the device token's signature does not verify with the enrolled key"),
    (jwt.InvalidAlgorithmError, 'the device token\'s alg is not "EdDSA", the algorithm of device keys'),
    (jwt.InvalidAudienceError, "the device token is for another audience (aud): sign it for this backend"),
    (jwt.MissingRequiredClaimError, "the device token lacks a required claim (sub, aud, iat, exp, jti)"),
    (jwt.InvalidIssuedAtError, "the device token's iat is not a number"),
    (jwt.DecodeError, "the device token is not a well-formed JWT"),
)


def read_device_token(
    token: str,
    public_key: ed25519.Ed25519PublicKey,
    audience: str,
    *,
    now: float | None = None,
    leeway: int = DEVICE_TOKEN_LEEWAY_SECONDS,
) -> DeviceClaims:
    """Check a device token against the enrolled key of the device it names; the algorithm is
    the key's (EdDSA), never the token's. ``DeviceTokenError`` says what is wrong."""
    device_id = device_of_token(token)
    moment = time.time() if now is None else now
    try:
        claims = jwt.decode(
            token,
            public_key,
            algorithms=["EdDSA"],
            audience=audience,
            leeway=leeway,
            # Times are judged below against ``now`` (PyJWT would read the clock itself).
            options={
                "require": ["sub", "aud", "iat", "exp", "jti"],
                "verify_iat": False,
                "verify_exp": False,
            },
        )
    except jwt.PyJWTError as exc:
        why = next((text for kind, text in _FAULTS if isinstance(exc, kind)), "the device token is not valid")
        raise DeviceTokenError(why) from None
    issued, expires, jti = claims["iat"], claims["exp"], claims["jti"]
    if claims["sub"] != device_id:
        raise DeviceTokenError("the device token's sub is not the device its kid names")
    if type(issued) is not int or type(expires) is not int:
        raise DeviceTokenError("the device token's iat and exp must be whole seconds")
    if expires + leeway < moment:
        raise DeviceTokenError("the device token has expired")
    if issued > moment + leeway:
        raise DeviceTokenError("the device token's iat is in the future (is the device's clock right?)")
    if not 0 < expires - issued <= MAX_DEVICE_TOKEN_SECONDS:
        raise DeviceTokenError(f"the device token may live at most {MAX_DEVICE_TOKEN_SECONDS} seconds")
    if not isinstance(jti, str) or not 16 <= len(jti) <= 64:
        raise DeviceTokenError("the device token's jti must be a unique string of 16 to 64 characters")
    return DeviceClaims(device_id, jti, expires)
