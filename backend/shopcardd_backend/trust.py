"""The backend's trust key: it signs what each sync answer tells a counter.

Counters pin its public half at enrolment (``GET /.well-known/shopcardd-trust-key.json``) and
believe a sync answer only when it is signed by that key, or by a key the pinned one announced
(``shopcardd_voucher.trust``). It lives in ``DATA_DIR/trust`` (0700) beside the other keys:
``KID.private.pem`` (0600) for the key in force and every earlier one, and ``chain.json``
(``{"current": KID, "links": [...]}``), the links from the first key to the current one, sent
with every answer so a counter pinned to any earlier key can follow. Made on first use; the
private keys never leave the folder. ``rotate_trust`` (``shopcardd-backend trust-key rotate``)
adds a key; running API processes take it up when restarted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shopcardd_voucher import InvalidKeyError, SigningKey
from shopcardd_voucher.keyfiles import key_folder, write_atomically, write_private
from shopcardd_voucher.trust import ANSWER_TYPE, sign_document, trust_link

from .signing import SigningKeyError, new_kid

CHAIN_FILE: Final = "chain.json"


@dataclass(frozen=True)
class TrustKey:
    """The trust key in force and the chain of links that leads to it."""

    key: SigningKey
    links: tuple[str, ...]

    def public_jwk(self) -> dict[str, Any]:
        return self.key.verification_key().to_jwk()

    def sign_answer(self, payload: dict[str, Any]) -> str:
        """A sync answer as a counter believes it: ``payload`` signed by the key in force."""
        return sign_document(self.key, ANSWER_TYPE, payload)


def _read(folder: Path) -> TrustKey | None:
    path = folder / CHAIN_FILE
    if not path.exists():
        return None
    try:
        chain = json.loads(path.read_text())
        kid, links = chain["current"], chain["links"]
        if not isinstance(kid, str) or not all(isinstance(link, str) for link in links):
            raise ValueError("current must be a kid and links a list of compact JWS")
        key = SigningKey.load(kid, folder / f"{kid}.private.pem")
    except (OSError, ValueError, KeyError, TypeError, InvalidKeyError) as exc:
        raise SigningKeyError(f"cannot load the trust key from {folder}: {exc}") from None
    return TrustKey(key, tuple(links))


def _add(folder: Path, links: tuple[str, ...], before: SigningKey | None) -> TrustKey:
    taken = {path.name.removesuffix(".private.pem") for path in folder.glob("*.private.pem")}
    key = SigningKey.generate(new_kid(taken), "EdDSA")
    write_private(folder / f"{key.kid}.private.pem", key.to_pem())
    if before is not None:
        links = (*links, trust_link(before, key.verification_key()))
    write_atomically(folder / CHAIN_FILE, json.dumps({"current": key.kid, "links": list(links)}, indent=2))
    return TrustKey(key, links)


def load_trust(folder: Path) -> TrustKey:
    """The trust key of ``folder``, made there first when it has none."""
    with key_folder(folder):  # several API processes may start at once: one makes the key
        return _read(folder) or _add(folder, (), None)


def rotate_trust(folder: Path) -> TrustKey:
    """A new trust key, announced by a link signed with the one in force (kept, as is its link)."""
    with key_folder(folder):
        old = _read(folder)
        return _add(folder, (), None) if old is None else _add(folder, old.links, old.key)
