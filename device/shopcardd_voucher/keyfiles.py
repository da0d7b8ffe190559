"""A key folder on disk: private keys written 0600, the public key set beside them.

The backend (its voucher signing keys, its trust chain, its development identity) and
``shopcardd-provision`` (keygen, enrolment bundles) both keep keys this way, under one lock, so
it lives with the key classes it writes. A private key is never overwritten: losing a key
that signed live vouchers strands them, so replacing one is a deliberate act (delete it first).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .keys import Algorithm, KeySet, SigningKey, VerificationKey

KID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,15}")
"""A key id: safe as a file name, and short, since it is in every voucher's header: with 16
characters at most, an EdDSA voucher with ids of 8 characters stays within 300 characters."""


class KeyFileError(Exception):
    """A key or key set that cannot be written or read as asked; the message says why."""


@dataclass(frozen=True)
class KeygenResult:
    private_key_path: Path
    jwks_path: Path
    key: VerificationKey


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start; refuse to replace an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a private key") from None
    os.fchmod(fd, 0o600)  # exactly 0600: the umask may only take bits away, and a strict one takes too many
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one rename, so a reader never sees half a key set."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class KeyFolderError(KeyFileError, OSError):
    """The key folder cannot be made or opened; an OSError too, for callers that handle those."""


@contextlib.contextmanager
def key_folder(out: Path) -> Iterator[None]:
    """Make ``out`` (0700: it holds private keys) if missing, and hold an exclusive lock on it,
    so that concurrent keygens (and a backend making its first key) all end up in ``jwks.json``.
    Not re-entrant: inside it, call ``add_key``, not ``shopcardd_provision.keys.keygen``."""
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise KeyFolderError(f"cannot use {out} as the key folder: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def check_kid(kid: str) -> None:
    if not KID.fullmatch(kid):
        raise KeyFileError(
            f"kid {kid!r}: use 1 to 16 letters, digits, '.', '_' or '-', not starting with '.' "
            "(it names the key file and goes into every voucher)"
        )


def add_key(alg: Algorithm, kid: str, out: Path) -> KeygenResult:
    """A new key: ``out/KID.private.pem`` (0600) and its public half added to ``out/jwks.json``.
    The caller holds ``key_folder(out)``."""
    check_kid(kid)
    private_key_path = out / f"{kid}.private.pem"
    if private_key_path.exists():
        raise KeyFileError(f"{private_key_path} already exists; refusing to overwrite a private key")
    jwks_path = out / "jwks.json"
    keyset = load_keyset(jwks_path) if jwks_path.exists() else KeySet()
    if kid in keyset:
        raise KeyFileError(f"{jwks_path} already holds a key with kid {kid!r}")
    signing_key = SigningKey.generate(kid, alg)
    public = signing_key.verification_key()
    keyset.add(public)
    write_private(private_key_path, signing_key.to_pem())
    try:
        write_atomically(jwks_path, keyset.to_json())
    except BaseException:
        private_key_path.unlink()  # an unpublished key would block a retry under the same kid
        raise
    return KeygenResult(private_key_path, jwks_path, public)


def load_keyset(path: Path) -> KeySet:
    try:
        return KeySet.load(path)
    except ValueError as exc:
        raise KeyFileError(str(exc)) from exc
