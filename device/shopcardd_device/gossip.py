"""The shop LAN's messages: what one counter tells the others, signed with its device key.

Each datagram is one compact JWS, header ``{"alg": "EdDSA", "kid": DEVICE_ID}``, signed with the
device's Ed25519 key from enrolment (``device_key``). A peer checks it against the public key the
backend gave it for that device at sync (the ledger's ``peers``), with EdDSA because device keys
are Ed25519 and nothing else: the algorithm comes from the key, never from the message. The
payload is a JSON object; ``t`` says which message it is:

- ``h`` hello, sent every few seconds: ``d`` device, ``m`` merchant, ``e`` its ledger's epoch,
  ``s`` the last number its ledger gave a redemption, ``b`` and ``n`` (the sending process's
  random id and its count of hellos and asks). A peer whose watermark for the device is behind
  ``s`` asks for what it missed, at the address the hello came from.
- ``q`` ask: ``to`` the device asked, ``after`` the asker's watermark for it, ``b``, ``n``.
  Answered to the address it came from, so it is signed too (a forged ask would aim answers at
  a victim).
- ``r`` records: ``after``/``through`` (the sender's numbers these records cover: all it has in
  that range) and ``recs``, each ``[voucher id, deal, redeemed at, expires at, seq]``. No user id:
  the LAN needs to know which voucher, not whose.

``read`` is pure (no socket, no ledger): bytes and the enrolled keys in, a ``Message`` out, or
``Dropped`` naming why (``DROP_REASONS``). ``Lan`` refuses a hello or ask not newer (``n``) than
the last of that device's process (``b``), so a replayed one cannot redirect answers for long; no
clock is needed, so a counter whose clock was set back is still heard. A replayed record is
harmless by construction: the ledger keeps a record once.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from shopcardd_voucher import SigningKey, is_valid_id
from shopcardd_voucher.voucher import parse_compact, sign_compact

from .ledger import LanRecord

MAX_DATAGRAM: Final = 16_384
"""Bytes; a longer datagram is junk (a page of records stays under ``PAGE_BYTES`` of JSON)."""
PAGE_BYTES: Final = 8_000
"""The most JSON bytes of records in one message: 40 to 80 records, one datagram on any LAN."""
MAX_NUMBER: Final = 2**53
"""The largest time or number a message may carry (NaN and infinity fail the range check too)."""
HELLO, ASK, RECORDS = "h", "q", "r"
DROP_REASONS: Final = (
    "bad_format",  # not a message of ours (wrong framing, JSON or fields)
    "unknown_device",  # not an enrolled counter of this merchant (unknown, or revoked at the last sync)
    "bad_signature",  # signed by another key than the device's enrolled one: forged or altered
    "other_merchant",  # a counter of another merchant (or a record claiming to be of one)
    "replayed",  # a hello or ask not newer than the last one of that device
    "over_budget",  # more signatures to check than the budget allows: a flood (the catch-up heals it)
)


class Dropped(Exception):
    """A datagram that is not acted on; ``reason`` is one of ``DROP_REASONS``."""

    def __init__(self, reason: str, detail: str = "", device_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.device_id = reason, detail, device_id


@dataclass(frozen=True, slots=True)
class Message:
    """One verified message of peer ``device_id``."""

    kind: str
    device_id: str
    merchant: str
    epoch: str
    last_seq: int = 0
    """Hello: the last number the peer's ledger gave."""
    boot: str = ""
    """Hello and ask: the sending process's random id; ``count`` numbers its hellos and asks."""
    count: int = 0
    to: str | None = None
    after: int = 0
    through: int = 0
    records: tuple[LanRecord, ...] = field(default=())


def _sign(key: SigningKey, payload: dict[str, Any]) -> bytes:
    if not isinstance(key.private_key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"a device key is Ed25519 (EdDSA), not {key.alg}")
    return sign_compact(key, payload).encode("ascii")


def hello(key: SigningKey, *, merchant: str, epoch: str, last_seq: int, boot: str, count: int) -> bytes:
    payload = {"t": HELLO, "d": key.kid, "m": merchant, "e": epoch, "s": last_seq, "b": boot, "n": count}
    return _sign(key, payload)


def ask(key: SigningKey, *, merchant: str, epoch: str, to: str, after: int, boot: str, count: int) -> bytes:
    payload = {"t": ASK, "d": key.kid, "m": merchant, "e": epoch, "to": to, "after": after}
    return _sign(key, {**payload, "b": boot, "n": count})


def records(
    key: SigningKey, *, merchant: str, epoch: str, rows: list[LanRecord], after: int, through: int
) -> bytes:
    recs = [[r.voucher_id, r.deal, r.redeemed_at, r.expires_at, r.seq] for r in rows]
    payload = {"t": RECORDS, "d": key.kid, "m": merchant, "e": epoch, "after": after, "through": through}
    return _sign(key, {**payload, "recs": recs})


def pages(rows: list[LanRecord], after: int, through: int) -> list[tuple[list[LanRecord], int, int]]:
    """``rows`` (all records numbered in (after, through]) cut into pages of at most ``PAGE_BYTES``,
    each with the span it covers, so every page on its own moves a peer's watermark."""
    result: list[tuple[list[LanRecord], int, int]] = []
    page: list[LanRecord] = []
    size, start = 0, after
    for row in rows:
        cost = len(row.voucher_id) + len(row.deal) + 48
        if page and size + cost > PAGE_BYTES:
            result.append((page, start, page[-1].seq))
            page, size, start = [], 0, page[-1].seq
        page.append(row)
        size += cost
    result.append((page, start, through))
    return result


def _number(payload: dict[str, Any], name: str, kind: type = int) -> Any:
    """A whole number (``kind`` float: any number) from 0 to ``MAX_NUMBER``: what SQLite stores as is."""
    value = payload.get(name)
    wanted = int | float if kind is float else int
    if isinstance(value, bool) or not isinstance(value, wanted) or not 0 <= value <= MAX_NUMBER:
        raise ValueError(f"{name} must be a number from 0 to {MAX_NUMBER}")
    return value


def _record(item: Any) -> LanRecord:
    if not isinstance(item, list) or len(item) != 5:
        raise ValueError("a record is [voucher id, deal, redeemed at, expires at, seq]")
    voucher_id, deal, redeemed_at, expires_at, seq = item
    if not (is_valid_id(voucher_id) and is_valid_id(deal)):
        raise ValueError("a record's voucher id and deal must be ids")
    numbers = {"at": redeemed_at, "exp": expires_at, "seq": seq}
    _number(numbers, "at", float)
    _number(numbers, "exp")
    _number(numbers, "seq")
    return LanRecord(voucher_id, deal, float(redeemed_at), expires_at, seq)


def read(
    datagram: bytes,
    *,
    merchant: str,
    peers: Mapping[str, ed25519.Ed25519PublicKey],
    may_verify: Callable[[], bool] | None = None,
) -> Message:
    """The verified message in ``datagram``, sent by one of ``peers`` (device id -> enrolled key) of
    ``merchant``; ``Dropped`` for anything else. Cheap checks first: a datagram of an unknown device
    costs no signature check, and ``may_verify`` (a budget) is asked before each check."""
    try:
        if len(datagram) > MAX_DATAGRAM:
            raise ValueError("too long")
        jws = parse_compact(datagram.decode("ascii"))
        if set(jws.header) != {"alg", "kid"}:
            raise ValueError('the header must be {"alg", "kid"}')
    except (ValueError, UnicodeError) as exc:
        raise Dropped("bad_format", str(exc)) from None
    device = jws.kid
    key = peers.get(device)
    if key is None:
        raise Dropped("unknown_device", "not an enrolled counter of this merchant", device[:64])
    if jws.alg != "EdDSA":
        raise Dropped("bad_signature", "device keys sign with EdDSA only", device)
    if may_verify is not None and not may_verify():
        raise Dropped("over_budget", "too many signatures to check this second: a flood", device)
    try:
        key.verify(jws.signature, jws.signing_input)
    except InvalidSignature:
        raise Dropped("bad_signature", "does not verify with the device's enrolled key", device) from None
    try:
        return _message(jws.payload(), device, merchant)
    except (ValueError, TypeError, KeyError, UnicodeError, binascii.Error) as exc:
        raise Dropped("bad_format", str(exc), device) from None


def _message(payload: Any, device: str, merchant: str) -> Message:
    """The fields of a verified payload, checked."""
    if not isinstance(payload, dict) or payload.get("d") != device:
        raise ValueError("the payload's d must be the device its kid names")
    if payload.get("m") != merchant:
        raise Dropped("other_merchant", f"for merchant {str(payload.get('m'))[:64]!r}", device)
    kind, epoch = payload.get("t"), payload.get("e")
    if not isinstance(epoch, str) or len(epoch) > 64:
        raise ValueError("e must be the sender's epoch")
    common: dict[str, Any] = {"kind": kind, "device_id": device, "merchant": merchant, "epoch": epoch}
    if kind in (HELLO, ASK):
        boot = payload.get("b")
        if not isinstance(boot, str) or len(boot) > 64:
            raise ValueError("b must be the sending process's id")
        common.update(boot=boot, count=_number(payload, "n"))
    if kind == HELLO:
        return Message(**common, last_seq=_number(payload, "s"))
    if kind == ASK:
        to = payload.get("to")
        if not isinstance(to, str):
            raise ValueError("an ask names the device it asks (to)")
        return Message(**common, to=to, after=_number(payload, "after"))
    if kind == RECORDS:
        recs = payload.get("recs")
        if not isinstance(recs, list):
            raise ValueError("recs must be a list")
        after, through = _number(payload, "after"), _number(payload, "through")
        if through < after:
            raise ValueError("through is before after")
        rows = tuple(_record(item) for item in recs)
        if any(not after < row.seq <= through for row in rows):
            raise ValueError("a record's seq is outside (after, through]")
        return Message(**common, after=after, through=through, records=rows)
    raise ValueError(f"unknown message type {str(kind)[:8]!r}")
