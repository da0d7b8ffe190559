"""The shop LAN's messages: what one counter tells the others, signed with its device key.

Each datagram is one compact JWS, header ``{"alg": "EdDSA", "kid": DEVICE_ID}``, signed with the
device's Ed25519 key from enrolment (``device_key``). A peer checks it against the public key the
backend gave it for that device at sync (the ledger's ``peers``), with EdDSA because device keys
are Ed25519 and nothing else: the algorithm comes from the key, never from the message. The
payload is a JSON object; ``t`` says which message it is:

Every message carries ``b`` and ``n``: the sender's start number (``Ledger.lan_start``: it rises
at each start of ``run`` and is kept in the ledger) and its count of messages in that start. A
peer drops a message whose (``b``, ``n``) is not above the last it heard from that device, kept in
its ledger too: a message recorded from an earlier process, or before either counter restarted, is
a replay. No clock is compared, so a counter whose clock was set back is still heard.

- ``h`` hello, sent every few seconds: ``d`` device, ``m`` merchant, ``e`` its ledger's epoch,
  ``s`` the last number its ledger gave a redemption, ``c`` a random challenge (a new one every
  few seconds), ``r`` (device -> the last challenge heard from that peer) and ``w`` (the peers
  heard whose address the sender has not learned yet: they answer with a hello at once). A peer
  learns where a device is only from a hello that comes from there and echoes one of its own
  recent challenges: a replayed hello cannot (its echo is stale), so it cannot move a peer's
  address.
- ``q`` ask: ``to`` the device asked, ``after`` the asker's watermark for it. Answered only to the
  asker's learned address, never to where the datagram came from.
- ``r`` records: ``after``/``through`` (the sender's numbers these records cover: all it has in
  that range) and ``recs``, each ``[voucher id, deal, redeemed at, expires at, seq]``. No user id:
  the LAN needs to know which voucher, not whose.

``read`` is pure (no socket, no ledger): bytes and the enrolled keys in, a ``Message`` out, or
``Dropped`` naming why (``DROP_REASONS``). A replayed record would be harmless anyway: the ledger
keeps a record once.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Iterable, Mapping
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
MAX_ECHOES: Final = 256
"""The most peers one hello echoes challenges of (a shop has a handful of counters)."""
HELLO, ASK, RECORDS = "h", "q", "r"
DROP_REASONS: Final = (
    "bad_format",  # not a message of ours (wrong framing, JSON or fields)
    "unknown_device",  # not an enrolled counter of this merchant (unknown, or revoked at the last sync)
    "bad_signature",  # signed by another key than the device's enrolled one: forged or altered
    "other_merchant",  # a counter of another merchant (or a record claiming to be of one)
    "wrong_address",  # names a peer whose address is known, from another one (no signature checked)
    "replayed",  # not newer (b, n) than the last message heard from that device
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
    start: int
    """The sender's start number; ``count`` numbers its messages within that start."""
    count: int
    last_seq: int = 0
    """Hello: the last number the peer's ledger gave."""
    challenge: str = ""
    """Hello: what the peer wants echoed to learn where this device is."""
    echoes: Mapping[str, str] = field(default_factory=dict)
    """Hello: device -> the last challenge the sender heard from it."""
    wants: tuple[str, ...] = ()
    """Hello: the devices whose echo the sender waits for (it has not learned their address)."""
    to: str | None = None
    after: int = 0
    through: int = 0
    records: tuple[LanRecord, ...] = field(default=())

    @property
    def counter(self) -> tuple[int, int]:
        return self.start, self.count


class Sender:
    """This device's side of the messages: who signs, for which merchant and ledger, and the
    numbering that makes each message newer than the last (``start``, then a count that rises
    with every message signed)."""

    def __init__(self, key: SigningKey, *, merchant: str, epoch: str, start: int) -> None:
        if not isinstance(key.private_key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"a device key is Ed25519 (EdDSA), not {key.alg}")
        self.key, self.merchant, self.epoch, self.start = key, merchant, epoch, start
        self.count = 0

    def sign(self, payload: dict[str, Any]) -> bytes:
        self.count += 1
        common = {"d": self.key.kid, "m": self.merchant, "e": self.epoch, "b": self.start, "n": self.count}
        return sign_compact(self.key, {**payload, **common}).encode("ascii")


def hello(
    sender: Sender, *, last_seq: int, challenge: str, echoes: Mapping[str, str], wants: Iterable[str] = ()
) -> bytes:
    payload = {"t": HELLO, "s": last_seq, "c": challenge, "r": dict(echoes), "w": sorted(wants)}
    return sender.sign(payload)


def ask(sender: Sender, *, to: str, after: int) -> bytes:
    return sender.sign({"t": ASK, "to": to, "after": after})


def records(sender: Sender, *, rows: list[LanRecord], after: int, through: int) -> bytes:
    recs = [[r.voucher_id, r.deal, r.redeemed_at, r.expires_at, r.seq] for r in rows]
    return sender.sign({"t": RECORDS, "after": after, "through": through, "recs": recs})


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
    may_come_from: Callable[[str], bool] | None = None,
    may_verify: Callable[[], bool] | None = None,
) -> Message:
    """The verified message in ``datagram``, sent by one of ``peers`` (device id -> enrolled key) of
    ``merchant``; ``Dropped`` for anything else. Cheap checks first: a datagram of an unknown device,
    or one that ``may_come_from(device)`` refuses (it came from elsewhere than that device's known
    address), costs no signature check, and ``may_verify`` (a budget) is asked before each check."""
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
    if may_come_from is not None and not may_come_from(device):
        raise Dropped("wrong_address", "not from the address this device was learned at", device)
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
    common.update(start=_number(payload, "b"), count=_number(payload, "n"))
    if kind == HELLO:
        challenge, echoes = payload.get("c"), payload.get("r")
        if not isinstance(challenge, str) or len(challenge) > 64:
            raise ValueError("c must be the sender's challenge")
        if not isinstance(echoes, dict) or len(echoes) > MAX_ECHOES:
            raise ValueError(f"r must map at most {MAX_ECHOES} devices to challenges")
        if not all(isinstance(value, str) and len(value) <= 64 for value in echoes.values()):
            raise ValueError("r must map devices to challenges")
        wants = payload.get("w")
        if not isinstance(wants, list) or len(wants) > MAX_ECHOES:
            raise ValueError(f"w must list at most {MAX_ECHOES} devices")
        if not all(isinstance(device, str) for device in wants):
            raise ValueError("w must list device ids")
        return Message(
            **common,
            last_seq=_number(payload, "s"),
            challenge=challenge,
            echoes=echoes,
            wants=tuple(wants),
        )
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
