"""Who is calling: users by the identity provider's bearer token, merchants by API key.

User tokens are JWTs with ``iss`` (``SHOPCARDD_USER_ISSUER``), ``sub`` (the user id), ``exp`` and,
when ``SHOPCARDD_USER_AUDIENCE`` is set (production needs it), that ``aud``, checked against the
provider's public keys (``SHOPCARDD_USER_JWKS``) or an HS256 secret
(``SHOPCARDD_USER_SECRET``). Without either, the development identity key in
``DATA_DIR/identity`` signs and checks them (``shopcardd-backend user-token``); production
refuses that. A signature check costs more than the rest of a claim (Ed25519: 54 us through
libsodium on the bench machine, twice that through OpenSSL), so a verified
token is remembered per process until it expires, in a bounded cache.

Most customers of a flash sale claim once, so most tokens are checked, not remembered. A token
of the usual shape (canonical base64url, a header of ``alg``, ``kid`` and ``typ`` only, the
standard claims of the standard types) is parsed once and its signature checked with the
configured key's own algorithm, the check prepared once (libsodium for an Ed25519 key, see
``ed25519``; PyJWT's wrapper of ``cryptography`` for the others): PyJWT's ``decode`` parsed the
token twice and rebuilt its checks on every call. Any other token
goes through ``jwt.decode`` as before, so every refusal keeps its reason.

Merchant API keys are 256 random bits, shown once; the store keeps only their SHA-256. A slow
password hash (bcrypt, argon2) exists to stop guessing low-entropy passwords from a stolen
hash; nobody can guess 256 random bits, so a fast hash is as safe here, lets the store look a
merchant up by the hash itself (an index, no per-merchant salt to try), and costs ~1 us a request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import secrets
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import jwt

from shopcardd_voucher import ID_RULE, MAX_TOKEN_LENGTH, SigningKey, is_valid_id
from shopcardd_voucher.keyfiles import key_folder, write_private
from shopcardd_voucher.voucher import canonical_segment, parse_compact

from .ed25519 import Verifies, verifier_of
from .settings import Settings, SettingsError, load_jwks
from .stores.base import DocumentStore, MerchantRecord

log = logging.getLogger("shopcardd_backend.identity")

DEV_IDENTITY_KID: Final = "dev-identity"
ASYMMETRIC_ALGORITHMS: Final = frozenset({"EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256"})
USER_ID_RULE: Final = ID_RULE
"""A user id goes into every voucher of the user as ``sub``: the voucher's own rule for ids."""
API_KEY_PREFIX: Final = "sck_"
MERCHANT_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
MERCHANT_ID_RULE: Final = "1 to 64 letters, digits, '.', '_' or '-'"


class Unauthorized(Exception):
    """The caller did not prove who it is; ``str(exc)`` says why, for the problem's detail."""


EXPIRED: Final = "the bearer token has expired"
BAD_SIGNATURE: Final = "the bearer token's signature does not verify"
# PyJWT's own messages name its internals (codecs, padding, segments); a client gets these.
# More specific errors first: InvalidSignatureError is a DecodeError.
_TOKEN_FAULTS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.ExpiredSignatureError, EXPIRED),
    (jwt.ImmatureSignatureError, "the bearer token is not valid yet (its iat or nbf is in the future)"),
    (jwt.InvalidSignatureError, BAD_SIGNATURE),
    (jwt.InvalidAlgorithmError, "the bearer token's alg is not the algorithm of its key"),
    (jwt.InvalidIssuerError, "the bearer token is not from this API's identity provider (iss)"),
    (jwt.InvalidAudienceError, "the bearer token was issued for another application (aud)"),
    (jwt.MissingRequiredClaimError, "the bearer token lacks a required claim (iss, sub, exp; aud here)"),
    (jwt.InvalidIssuedAtError, "the bearer token's iat is not a number"),
    (jwt.DecodeError, "the bearer token is not a well-formed JWT"),
)


def _token_fault(exc: jwt.PyJWTError) -> str:
    """What is wrong with a token, in our words."""
    faults = (why for kind, why in _TOKEN_FAULTS if isinstance(exc, kind))
    return next(faults, "the bearer token is not valid")


@dataclass(frozen=True, slots=True)
class User:
    """Who claims: the token's ``sub``, and where to tell them, when the token says."""

    user_id: str
    email: str | None = None
    phone: str | None = None


EMAIL: Final = re.compile(r"[^@\s]{1,64}@[^@\s]{1,190}")
PHONE: Final = re.compile(r"\+?[0-9][0-9 ()-]{3,24}")


def _contact(claims: dict[str, Any], name: str, form: re.Pattern[str]) -> str | None:
    """A contact claim when it is usable; a malformed one is left out (the claim still counts)."""
    value = claims.get(name)
    if isinstance(value, str) and form.fullmatch(value) and value.isprintable():
        return value
    return None


@dataclass(frozen=True, slots=True)
class _PublicKey:
    alg: str
    key: Any


_USUAL_HEADER: Final = frozenset({"alg", "kid", "typ"})


def _verifies(alg: str, key: Any) -> Verifies:
    """The signature check of ``alg`` with ``key``, prepared once: libsodium's for an Ed25519
    key (``ed25519``: twice OpenSSL's speed), PyJWT's algorithm object for any other."""
    fast = verifier_of(key) if alg == "EdDSA" else None
    if fast is not None:
        return fast
    algorithm = jwt.get_algorithm_by_name(alg)
    prepared = algorithm.prepare_key(key)
    return lambda message, signature: bool(algorithm.verify(message, prepared, signature))


def _whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class UserTokenVerifier:
    """Checks user bearer tokens and remembers verified ones until they expire."""

    def __init__(
        self,
        issuer: str,
        *,
        public_keys: dict[str, _PublicKey] | None = None,
        secret: bytes | None = None,
        audience: str | None = None,
        cache_size: int = 100_000,
        leeway: int = 30,
    ) -> None:
        if (public_keys is None) == (secret is None):
            raise ValueError("give the identity provider's public keys or its HS256 secret")
        self.issuer = issuer
        self.audience = audience
        self._keys = public_keys or {}
        self._secret = secret
        self._checks: dict[str | None, tuple[str, Verifies]] = {
            kid: (found.alg, _verifies(found.alg, found.key)) for kid, found in self._keys.items()
        }
        """kid -> (alg, the check of a signature with its key); None -> the HS256 secret."""
        if secret is not None:
            with contextlib.suppress(jwt.InvalidKeyError):  # a PEM key as secret: refused per token
                self._checks[None] = ("HS256", _verifies("HS256", secret))
        self._cache: OrderedDict[str, tuple[str, str | None, str | None, int]] = OrderedDict()
        """Token -> (user id, email, phone, expiry), oldest first. Full, it drops its oldest in
        O(1): a plain dict emptied from its front scans the holes left there, 54 us an insert at
        100,000 tokens. Plain tuples of strings and numbers, not ``User`` objects: the garbage
        collector stops tracking them, and a full collection with 100,000 tokens cached took
        14 ms instead of 38 (every claim in flight waits for one)."""
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._leeway = leeway

    def user_id(self, token: str, now: float | None = None) -> str:
        """The verified ``sub`` of ``token``; ``Unauthorized`` when it is not a valid token."""
        return self.user(token, now).user_id

    def user(self, token: str, now: float | None = None) -> User:
        """The verified user of ``token``; ``Unauthorized`` when it is not a valid token."""
        now = time.time() if now is None else now
        cached = self.cached_user(token, now)
        if cached is not None:
            return cached
        if token in self._cache:  # verified before, expired since
            with self._lock:
                self._cache.pop(token, None)
            raise Unauthorized(EXPIRED)
        user, expires = self._verify(token)
        if self._cache_size:
            with self._lock:
                while len(self._cache) >= self._cache_size:
                    self._cache.popitem(last=False)
                self._cache[token] = (user.user_id, user.email, user.phone, expires)
        return user

    def cached_user(self, token: str, now: float | None = None) -> User | None:
        """The user of a token this process has verified and that has not expired; None for any
        other (its signature is not checked here: the claim's rate limit comes first)."""
        hit = self._cache.get(token)
        if hit is None or (time.time() if now is None else now) >= hit[3] + self._leeway:
            return None
        return User(hit[0], hit[1], hit[2])

    def _verify(self, token: str) -> tuple[User, int]:
        """The token's user and expiry: by ``_usual_claims`` when the token has the usual shape,
        else by ``jwt.decode``, whose refusals say why."""
        claims = self._usual_claims(token)
        if claims is None:
            claims = self._decoded(token)
        user = normal_user_id(claims["sub"])
        if user is None:
            raise Unauthorized(f"the bearer token's sub must be {USER_ID_RULE}")
        contacts = _contact(claims, "email", EMAIL), _contact(claims, "phone_number", PHONE)
        return User(user, *contacts), int(claims["exp"])

    def _usual_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a token of the usual shape whose signature and claims ``jwt.decode``
        would accept; ``Unauthorized`` for a bad signature (``jwt.decode`` would say the same
        of such a token); None for any other token, left to ``jwt.decode``."""
        try:
            jws = parse_compact(token)
            header = jws.header
            if not header.keys() <= _USUAL_HEADER:
                return None
            check = self._checks.get(None if self._secret is not None else jws.kid)
            if check is None or check[0] != jws.alg:
                return None
            verifies = check[1]
            claims_json = canonical_segment(jws.payload_segment)
        except (ValueError, UnicodeError):
            return None
        try:
            verified = verifies(jws.signing_input, jws.signature)
        except (ValueError, TypeError):
            return None
        if not verified:
            raise Unauthorized(BAD_SIGNATURE)
        try:
            claims = json.loads(claims_json)
        except (ValueError, RecursionError):
            return None
        return claims if isinstance(claims, dict) and self._usual(claims) else None

    def _usual(self, claims: dict[str, Any]) -> bool:
        """Whether ``jwt.decode`` would accept these claims with this verifier's options: the
        required ones there, each of its type, in time, of our issuer (and audience)."""
        now = time.time()
        exp, iat, aud = claims.get("exp"), claims.get("iat"), claims.get("aud")
        in_time = _whole_number(exp) and exp > now - self._leeway
        issued = "iat" not in claims or (_whole_number(iat) and iat <= now + self._leeway)
        audience = self.audience is None or (isinstance(aud, str) and aud == self.audience)
        return bool(
            in_time
            and issued
            and audience
            and "nbf" not in claims
            and isinstance(claims.get("sub"), str)
            and isinstance(claims.get("iss"), str)
            and claims["iss"] == self.issuer
            and isinstance(claims.get("jti", ""), str)
        )

    def _decoded(self, token: str) -> dict[str, Any]:
        """The claims ``jwt.decode`` checked; ``Unauthorized`` with its reason in our words."""
        try:
            header = jwt.get_unverified_header(token)
            if self._secret is not None:
                key, algorithms = self._secret, ["HS256"]
            else:
                found = self._keys.get(header.get("kid")) if isinstance(header.get("kid"), str) else None
                if found is None:
                    raise Unauthorized("the bearer token's kid is not one of the identity provider's keys")
                key, algorithms = found.key, [found.alg]
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=self.issuer,
                audience=self.audience,
                leeway=self._leeway,
                options={
                    "require": ["exp", "sub", "iss", *(["aud"] if self.audience else [])],
                    "verify_aud": self.audience is not None,
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(_token_fault(exc)) from None
        return claims


def normal_user_id(value: object) -> str | None:
    """``value`` in NFC when it can be a user id, else ``None``. One user has one id: the same name
    spelt with a combining accent is the same user to the per-user limit, and an id that hides
    characters (zero-width, bidirectional controls, lone surrogates) is refused, never stored.
    The API refuses a token whose ``sub`` is not one, and ``user-token`` refuses to mint one."""
    if not isinstance(value, str) or len(value) > MAX_TOKEN_LENGTH:  # never normalise megabytes
        return None
    try:
        normal = unicodedata.normalize("NFC", value)
    except UnicodeError:
        return None
    return normal if is_valid_id(normal) else None


def _parse_jwks(value: str) -> dict[str, _PublicKey]:
    keys: dict[str, _PublicKey] = {}
    for jwk in load_jwks(value)["keys"]:
        if not isinstance(jwk, dict):
            raise SettingsError("SHOPCARDD_USER_JWKS: every key must be a JSON object (a JWK)")
        kid = jwk.get("kid")
        try:
            parsed = jwt.PyJWK(jwk)
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            raise SettingsError(f"SHOPCARDD_USER_JWKS: key {kid!r} is not a usable JWK: {exc}") from None
        if parsed.algorithm_name not in ASYMMETRIC_ALGORITHMS or not parsed.key_id:
            raise SettingsError(f"SHOPCARDD_USER_JWKS: key {kid!r} needs a kid and a public-key alg")
        keys[parsed.key_id] = _PublicKey(parsed.algorithm_name, parsed.key)
    return keys


class NoIdentityKey(LookupError):
    """The data folder holds no development identity key; ``str(exc)`` says where and what to do."""


def dev_identity_path(settings: Settings) -> Path:
    """Where the development identity key is, absolute: the folder a command names to its operator."""
    return (settings.identity_dir / f"{DEV_IDENTITY_KID}.private.pem").absolute()


def dev_identity_key(settings: Settings, *, create: bool = True) -> SigningKey:
    """The development identity key in ``DATA_DIR/identity``, made on first use (0600) and logged
    where. ``create=False`` is for ``user-token``: a key it made in the wrong folder (a second shell
    without ``SHOPCARDD_DATA_DIR``) would sign tokens the served backend refuses, with no hint why,
    so it raises ``NoIdentityKey`` and makes nothing, not even the folder."""
    path = dev_identity_path(settings)
    if not create:
        if not path.exists():
            raise NoIdentityKey(
                f"no development identity key in {path.parent}: `shopcardd-backend serve` makes it on "
                "first start; or set SHOPCARDD_DATA_DIR to the data folder of the served backend"
            )
        return SigningKey.load(DEV_IDENTITY_KID, path)
    settings.make_data_dir()
    with key_folder(settings.identity_dir):
        if not path.exists():
            write_private(path, SigningKey.generate(DEV_IDENTITY_KID, "EdDSA").to_pem())
            log.info("made the development identity key", extra={"kid": DEV_IDENTITY_KID, "path": str(path)})
    return SigningKey.load(DEV_IDENTITY_KID, path)


def build_verifier(settings: Settings) -> UserTokenVerifier:
    common: dict[str, Any] = {
        "cache_size": settings.user_token_cache_size,
        "audience": settings.user_audience or None,  # set but empty: not checked, as unset
    }
    if settings.user_secret is not None:
        return UserTokenVerifier(
            settings.user_issuer, secret=settings.user_secret.get_secret_value().encode(), **common
        )
    if settings.user_jwks is not None:
        return UserTokenVerifier(settings.user_issuer, public_keys=_parse_jwks(settings.user_jwks), **common)
    key = dev_identity_key(settings)
    public = {key.kid: _PublicKey(key.alg, key.private_key.public_key())}
    return UserTokenVerifier(settings.user_issuer, public_keys=public, **common)


def mint_user_token(
    key: SigningKey,
    issuer: str,
    user: str,
    ttl: int,
    now: float | None = None,
    email: str | None = None,
    phone: str | None = None,
    audience: str | None = None,
) -> str:
    """A development bearer token for ``user`` (what the identity provider gives a real user),
    with ``aud`` and the OpenID Connect contact claims ``email`` and ``phone_number`` when given."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"iss": issuer, "sub": user, "iat": issued, "exp": issued + ttl}
    if audience:
        claims["aud"] = audience
    claims |= {name: value for name, value in (("email", email), ("phone_number", phone)) if value}
    return jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid})


def new_api_key() -> str:
    """A merchant API key: 256 random bits, base64url, with a prefix that says what it is."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def register_merchant(store: DocumentStore, merchant_id: str) -> str:
    """Register a merchant with a new API key and return the key (its hash alone is stored).
    ``DuplicateError`` when the merchant exists, ``ValueError`` for an id a voucher cannot carry."""
    if not MERCHANT_ID.fullmatch(merchant_id):
        raise ValueError(f"merchant id {merchant_id!r}: use {MERCHANT_ID_RULE}")
    api_key = new_api_key()
    store.add_merchant(MerchantRecord(merchant_id, hash_api_key(api_key), datetime.now(UTC)))
    return api_key
