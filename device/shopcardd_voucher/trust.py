"""Signed documents from the backend's trust key: what a counter believes of a sync answer.

Whoever answers a counter's sync would otherwise choose the voucher keys it accepts. So what a
sync answer tells the counter (results, key set, revocations, peers, server time, the request's
nonce) travels as one compact JWS signed by the backend's trust key, whose public half the
counter's bundle pins at enrolment. A new trust key is announced by a link, a compact JWS
signed by the key before it; the backend sends its whole chain of links with each answer, and
the counter follows it from the key it has pinned. The algorithm is always the pinned key's,
never the header's. Each document names what it is (``typ``), so a link is never read as an
answer, nor an answer meant for one device as another's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from .keys import InvalidKeyError, SigningKey, VerificationKey
from .voucher import parse_compact, sign_compact, signature_matches

ANSWER_TYPE: Final = "shopcardd-sync-answer"
LINK_TYPE: Final = "shopcardd-trust-key"
MAX_CHAIN_LINKS: Final = 64
"""More links than rotations any backend makes: a longer chain is refused unread."""


class TrustError(ValueError):
    """A signed document the pinned trust key does not vouch for; ``str(exc)`` says why."""


def sign_document(key: SigningKey, typ: str, payload: dict[str, Any]) -> str:
    """A compact JWS of ``payload`` marked as a ``typ`` document, signed by ``key``."""
    return sign_compact(key, {**payload, "typ": typ})


def read_document(text: object, key: VerificationKey, typ: str) -> dict[str, Any]:
    """The payload of a ``typ`` document that ``key`` signed; ``TrustError`` for anything else."""
    if not isinstance(text, str) or not text.isascii():
        raise TrustError(f"the {typ} document is not a compact JWS")
    try:
        jws = parse_compact(text)
    except ValueError as exc:
        raise TrustError(f"the {typ} document is not a compact JWS ({exc})") from None
    if jws.kid != key.kid:
        raise TrustError(f"the {typ} document is signed by key {jws.kid!r}, not the trusted key {key.kid!r}")
    if not signature_matches(jws, key):
        raise TrustError(f"the {typ} document's signature does not verify with trust key {key.kid!r}")
    try:
        payload = jws.payload()
    except (ValueError, UnicodeError) as exc:
        raise TrustError(f"the {typ} document's payload is not a JSON object ({exc})") from None
    if payload.get("typ") != typ:
        raise TrustError(f"the document signed by {key.kid!r} is not a {typ} document")
    return payload


def trust_link(old: SigningKey, new: VerificationKey) -> str:
    """The link announcing ``new`` as the trust key after ``old``, signed by ``old``."""
    return sign_document(old, LINK_TYPE, {"key": new.to_jwk()})


def follow_chain(pinned: VerificationKey, links: Sequence[object]) -> VerificationKey:
    """The trust key that ``links`` lead to from ``pinned`` (``pinned`` itself when none follows).

    Links signed by other keys (the history before the pin) are passed over; a link that names
    the pinned key but does not verify refuses the whole chain."""
    if len(links) > MAX_CHAIN_LINKS:
        raise TrustError(f"the trust chain has {len(links)} links, more than {MAX_CHAIN_LINKS}")
    current = pinned
    for text in links:
        try:
            signer = parse_compact(text).kid if isinstance(text, str) else None
        except ValueError:
            signer = None
        if signer is None:
            raise TrustError("a link of the trust chain is not a compact JWS")
        if signer != current.kid:
            continue
        jwk = read_document(text, current, LINK_TYPE).get("key")
        if not isinstance(jwk, dict):
            raise TrustError("a link of the trust chain names no key")
        try:
            current = VerificationKey.from_jwk(jwk)
        except InvalidKeyError as exc:
            raise TrustError(f"a link of the trust chain names no usable key ({exc})") from None
    return current
