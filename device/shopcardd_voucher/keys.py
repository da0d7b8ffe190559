"""Voucher keys: the backend's private signing key and the public key sets devices hold.

A key carries its own algorithm. The verifier never asks the token which algorithm to use;
it looks the key up by ``kid`` and uses the algorithm that key was made for.
Key sets travel as JWKS (RFC 7517) with an optional validity window per key (``nbf`` and
``exp`` members, seconds since the epoch): the window in which the key may have *signed*
a voucher, so a retired key still verifies the vouchers it issued before retirement.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from .limits import MAX_VOUCHER_LIFETIME_SECONDS

Algorithm = Literal["EdDSA", "ES256", "RS256"]
ALGORITHMS: Final[tuple[str, ...]] = get_args(Algorithm)
DEFAULT_ALGORITHM: Final[Algorithm] = "EdDSA"

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
"""JWK members that hold private or secret key material (RFC 7518, section 6): a key set is public
keys only, so a JWK holding any of them is refused whatever its type."""


class InvalidKeyError(ValueError):
    """A key or key set that cannot be used: wrong type, wrong algorithm, bad JWKS."""


def _algorithm_of(key: PrivateKey | PublicKey) -> Algorithm:
    """The one algorithm a key object is good for."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidKeyError(f"ES256 needs a P-256 key, not {key.curve.name}")
        return "ES256"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InvalidKeyError(f"RS256 needs an RSA key of 2048 bits or more, not {key.key_size}")
        return "RS256"
    raise InvalidKeyError(f"unsupported key type {type(key).__name__}")


def _to_jwk(public_key: PublicKey, alg: Algorithm) -> dict[str, Any]:
    converter = {"EdDSA": OKPAlgorithm, "ES256": ECAlgorithm, "RS256": RSAAlgorithm}[alg]
    jwk = dict(converter.to_jwk(public_key, as_dict=True))
    jwk.pop("key_ops", None)  # pyjwt adds it for some key types only; "use": "sig" says it for all
    return jwk


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key a verifier trusts, with the window in which it may have signed."""

    kid: str
    alg: Algorithm
    public_key: PublicKey
    not_before: int | None = None
    expires: int | None = None

    def __post_init__(self) -> None:
        if not self.kid:
            raise InvalidKeyError("a key needs a non-empty kid")
        if _algorithm_of(self.public_key) != self.alg:
            raise InvalidKeyError(f"key {self.kid!r} is not a {self.alg} key")

    def signed_within_window(self, issued_at: int, expires_at: int | None = None) -> bool:
        """Whether a voucher issued at ``issued_at`` falls in this key's signing window, and (when
        given) expires no later than a voucher of the longest lifetime signed at its close."""
        if self.not_before is not None and issued_at < self.not_before:
            return False
        if self.expires is None:
            return True
        late = expires_at is not None and expires_at > self.expires + MAX_VOUCHER_LIFETIME_SECONDS
        return issued_at <= self.expires and not late

    def is_valid_at(self, when: float) -> bool:
        """Whether the key may still sign at ``when`` (for status displays and rotation)."""
        return self.signed_within_window(int(when))

    def to_jwk(self) -> dict[str, Any]:
        jwk = {**_to_jwk(self.public_key, self.alg), "kid": self.kid, "alg": self.alg, "use": "sig"}
        if self.not_before is not None:
            jwk["nbf"] = self.not_before
        if self.expires is not None:
            jwk["exp"] = self.expires
        return jwk

    @classmethod
    def from_jwk(cls, jwk: dict[str, Any]) -> VerificationKey:
        if not isinstance(jwk, dict):
            raise InvalidKeyError("a JWK must be a JSON object")
        kid, alg = jwk.get("kid"), jwk.get("alg")
        if not isinstance(kid, str) or not kid:
            raise InvalidKeyError("every voucher key in a JWKS needs a kid")
        if alg not in ALGORITHMS:
            raise InvalidKeyError(f"key {kid!r}: alg must be one of {', '.join(ALGORITHMS)}, not {alg!r}")
        private = sorted(PRIVATE_MEMBERS & set(jwk))
        if private:
            raise InvalidKeyError(
                f"key {kid!r} holds private material ({', '.join(private)}); a key set is public keys only"
            )
        try:
            public_key = jwt.PyJWK(jwk, algorithm=alg).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise InvalidKeyError(f"key {kid!r}: {exc}") from exc
        window = {name: jwk.get(name) for name in ("nbf", "exp")}
        for name, value in window.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise InvalidKeyError(f"key {kid!r}: {name} must be an integer timestamp")
        return cls(kid, alg, public_key, window["nbf"], window["exp"])


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The backend's private key for one ``kid``. Never leaves the backend or provisioning host."""

    kid: str
    private_key: PrivateKey
    alg: Algorithm = field(init=False)

    def __post_init__(self) -> None:
        if not self.kid:
            raise InvalidKeyError("a key needs a non-empty kid")
        object.__setattr__(self, "alg", _algorithm_of(self.private_key))

    @classmethod
    def generate(cls, kid: str, alg: Algorithm = DEFAULT_ALGORITHM) -> SigningKey:
        if alg == "EdDSA":
            return cls(kid, ed25519.Ed25519PrivateKey.generate())
        if alg == "ES256":
            return cls(kid, ec.generate_private_key(ec.SECP256R1()))
        if alg == "RS256":
            return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        raise InvalidKeyError(f"alg must be one of {', '.join(ALGORITHMS)}, not {alg!r}")

    @classmethod
    def from_pem(cls, kid: str, pem: bytes) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidKeyError(f"not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, PrivateKey):
            raise InvalidKeyError(f"unsupported key type {type(key).__name__}")
        return cls(kid, key)

    @classmethod
    def load(cls, kid: str, path: str | Path) -> SigningKey:
        return cls.from_pem(kid, Path(path).read_bytes())

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def verification_key(self, not_before: int | None = None, expires: int | None = None) -> VerificationKey:
        return VerificationKey(self.kid, self.alg, self.private_key.public_key(), not_before, expires)


class KeySet:
    """The public keys a verifier trusts, by ``kid``. Several may be live during a rotation."""

    def __init__(self, keys: Iterable[VerificationKey] = ()) -> None:
        self._keys: dict[str, VerificationKey] = {}
        for key in keys:
            self.add(key)

    def add(self, key: VerificationKey) -> None:
        if key.kid in self._keys and self._keys[key.kid].to_jwk() != key.to_jwk():
            raise InvalidKeyError(f"kid {key.kid!r} is already in the key set with another key")
        self._keys[key.kid] = key

    def get(self, kid: str) -> VerificationKey | None:
        return self._keys.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __iter__(self) -> Iterator[VerificationKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def kids(self) -> list[str]:
        return list(self._keys)

    def to_jwks(self) -> dict[str, Any]:
        return {"keys": [key.to_jwk() for key in self]}

    def to_json(self) -> str:
        return json.dumps(self.to_jwks(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_jwks(cls, jwks: dict[str, Any] | str | bytes) -> KeySet:
        """Parse a JWKS document; a broken key set is refused whole, never half-loaded."""
        if isinstance(jwks, str | bytes):
            try:
                jwks = json.loads(jwks)
            except ValueError as exc:
                raise InvalidKeyError(f"key set is not valid JSON: {exc}") from exc
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise InvalidKeyError('a key set is a JSON object with a "keys" list')
        return cls(VerificationKey.from_jwk(jwk) for jwk in jwks["keys"])

    @classmethod
    def load(cls, path: str | Path) -> KeySet:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidKeyError(f"cannot read key set {path}: {exc.strerror}") from exc
        except UnicodeDecodeError:
            raise InvalidKeyError(f"key set {path} is not a JSON text file") from None
        return cls.from_jwks(text)
