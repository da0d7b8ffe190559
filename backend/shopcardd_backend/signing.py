"""Voucher signing keys: loaded from ``DATA_DIR/keys``, generated there on first start.

The folder has the layout ``shopcardd-provision keygen`` writes: ``KID.private.pem`` (0600)
and ``jwks.json`` holding every public key, including retired ones, so vouchers signed before a
rotation still verify. ``GET /.well-known/jwks.json`` and each device sync publish that file's
keys as it is now (``PublishedKeys``), so a key added while the API runs is published at once.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Collection
from pathlib import Path
from typing import Any, Final

from shopcardd_voucher import Algorithm, InvalidKeyError, KeySet, SigningKey, Voucher, sign
from shopcardd_voucher.keyfiles import KeyFileError, add_key, key_folder

from .ed25519 import signer_of

log = logging.getLogger("shopcardd_backend.signing")


class SigningKeyError(RuntimeError):
    """The key folder cannot give us a signing key (unreadable, inconsistent)."""


class VoucherSigner:
    """Signs the voucher claims the gate decided, with the active key; publishes the key set."""

    def __init__(self, key: SigningKey, keyset: KeySet) -> None:
        if key.kid not in keyset:
            raise SigningKeyError(f"signing key {key.kid!r} is not in the published key set")
        published = {k: v for k, v in keyset.get(key.kid).to_jwk().items() if k not in ("nbf", "exp")}
        if published != key.verification_key().to_jwk():
            raise SigningKeyError(f"signing key {key.kid!r} does not match its published public key")
        self.key = key
        self.jwks: dict[str, Any] = keyset.to_jwks()
        self._signs = signer_of(key.private_key)
        """libsodium's Ed25519 for an Ed25519 key (twice OpenSSL's speed), else None."""

    def sign(self, voucher: Voucher) -> str:
        """The voucher's token; the key's own kid goes into the header (whatever ``voucher.kid``)."""
        return sign(self.key, voucher, self._signs)


KID_ALPHABET: Final = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base32, lower case
KID_RANDOM_CHARACTERS: Final = 5


def new_kid(taken: Collection[str] = ()) -> str:
    """A kid of 6 characters (25 random bits), none of ``taken``: every byte of the header makes
    the QR code denser, and a 7-character kid pushes an EdDSA voucher with 8-character ids to
    288 characters, one past QR version 12 at level M."""
    while True:
        kid = "k" + "".join(secrets.choice(KID_ALPHABET) for _ in range(KID_RANDOM_CHARACTERS))
        if kid not in taken:
            return kid


def load_signer(keys_dir: Path, alg: Algorithm = "EdDSA", kid: str | None = None) -> VoucherSigner:
    """The signer for ``keys_dir``; makes a key there first when the folder has none."""
    with key_folder(keys_dir):  # the lock shopcardd-provision keygen takes too
        jwks_path = keys_dir / "jwks.json"
        try:
            keyset = KeySet.load(jwks_path) if jwks_path.exists() else KeySet()
        except InvalidKeyError as exc:
            raise SigningKeyError(str(exc)) from exc
        private = {path.name.removesuffix(".private.pem") for path in keys_dir.glob("*.private.pem")}
        usable = [k for k in keyset.kids if k in private]
        if kid is None and not usable:
            try:
                made = add_key(alg, new_kid({*keyset.kids, *private}), keys_dir)
            except (KeyFileError, InvalidKeyError) as exc:
                raise SigningKeyError(str(exc)) from exc
            keyset.add(made.key)  # what keygen wrote to jwks.json, without reading it back
            usable = [made.key.kid]
        chosen = kid or usable[-1]
        try:
            key = SigningKey.load(chosen, keys_dir / f"{chosen}.private.pem")
        except (OSError, InvalidKeyError) as exc:
            raise SigningKeyError(f"cannot load signing key {chosen!r} from {keys_dir}: {exc}") from exc
    return VoucherSigner(key, keyset)


class PublishedKeys:
    """The voucher key set as the key folder's ``jwks.json`` holds it now, read again whenever
    the file changes, with the signing key always in it.

    So a key that ``shopcardd-provision keygen`` adds is published (``/.well-known/jwks.json``,
    each sync) by every running API process at once, before any process signs with it: counters
    learn it at their next sync, and no voucher of it is ``unknown_key``. A file that cannot be
    read keeps the last good key set (logged)."""

    def __init__(self, signer: VoucherSigner, jwks_path: Path) -> None:
        self.signer = signer
        self.path = jwks_path
        self._seen: tuple[int, int] | None = None
        self._jwks = signer.jwks

    def jwks(self) -> dict[str, Any]:
        try:
            info = self.path.stat()
        except OSError:
            return self._jwks
        seen = (info.st_mtime_ns, info.st_size)
        if seen != self._seen:
            try:
                keyset = KeySet.load(self.path)
                if self.signer.key.kid not in keyset:
                    keyset.add(self.signer.key.verification_key())
                self._jwks = keyset.to_jwks()
            except InvalidKeyError as exc:
                log.warning("key set not reloaded; the last good one stays", extra={"error": str(exc)})
            self._seen = seen
        return self._jwks
