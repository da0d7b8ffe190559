"""``shopcardd-provision keygen``, ``issue``'s key checks: the operator's side of the keys.

The key folder itself (0700, private keys written 0600 and never overwritten, the public key
set beside them, one lock) is ``shopcardd_voucher.keyfiles``, which the backend uses too.
"""

from __future__ import annotations

from pathlib import Path

from shopcardd_voucher import Algorithm, SigningKey
from shopcardd_voucher.keyfiles import KeygenResult, add_key, check_kid, key_folder, load_keyset


class ProvisionError(Exception):
    """A provisioning step that cannot be done as asked; the message says why."""


def keygen(alg: Algorithm, kid: str, out: Path) -> KeygenResult:
    """Generate a key: ``out/KID.private.pem`` (0600) and its public half added to ``out/jwks.json``."""
    check_kid(kid)  # before the folder is made
    with key_folder(out):
        return add_key(alg, kid, out)


def check_published(key: SigningKey, jwks_path: Path) -> None:
    """Refuse to sign with a key its key set does not publish under that kid: every voucher
    it signed would be ``unknown_key`` or ``bad_signature`` at every counter."""
    published = load_keyset(jwks_path).get(key.kid)
    if published is None:
        raise ProvisionError(f"{jwks_path} has no key with kid {key.kid!r}; counters would not know it")
    if key.verification_key(published.not_before, published.expires).to_jwk() != published.to_jwk():
        raise ProvisionError(
            f"{jwks_path} publishes another key under kid {key.kid!r}; wrong --key or --kid?"
        )


def load_signing_key(path: Path, kid: str) -> SigningKey:
    try:
        return SigningKey.load(kid, path)
    except OSError as exc:
        raise ProvisionError(f"cannot read private key {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ProvisionError(f"{path}: {exc}") from exc
