"""The device use cases: enrol and revoke counters, authenticate their sync, run one sync,
list conflicting redemptions, revoke vouchers.

The routes (``api/routes/devices.py``, ``vouchers.py``, ``merchants.py``) are thin adapters
over ``DeviceService``. A counter proves who it is with a short-lived token signed by its own
Ed25519 key (``shopcardd_voucher.device_auth``, which the counter imports too); the key is
the one enrolled for that device id, the algorithm the key's, and each token's ``jti`` works
once. One sync is one round trip: redemptions up (stored once per voucher and device, so a
batch sent twice changes nothing), and down the voucher key set, the revocations since the
device's watermark, the merchant's other counters and the server's time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ed25519

from shopcardd_voucher import MAX_LEEWAY_SECONDS, MAX_VOUCHER_LIFETIME_SECONDS
from shopcardd_voucher.device_auth import (
    DEVICE_ID,
    DEVICE_ID_RULE,
    DEVICE_TOKEN_LEEWAY_SECONDS,
    DeviceTokenError,
    device_of_token,
    parse_public_jwk,
    read_device_token,
)

from .events import CLAIM_ISSUED
from .gates.base import Outbox
from .stores.base import (
    DeviceRecord,
    DeviceStatus,
    DocumentStore,
    DuplicateError,
    RedemptionRecord,
    RevocationKind,
    RevocationRecord,
    VoucherRecord,
)

log = logging.getLogger("shopcardd_backend.devices")
MAX_REDEMPTIONS_PER_SYNC: Final = 500
MAX_REVOCATIONS_PER_SYNC: Final = 1000
REDEEMED_AT_SKEW: Final = timedelta(minutes=5)
"""How far past the backend's clock a counter's ``redeemed_at`` may lie: a counter trusts its clock
only while it is synchronised, so more is a broken clock, not a redemption."""
OUTBOX_PAGE: Final = 1000


class DeviceNotFound(LookupError):
    """No device of that id is enrolled."""


class NotYourDevice(PermissionError):
    """The device belongs to another merchant (or the enrolment names another merchant)."""


class DeviceIdTaken(ValueError):
    """A device of that id is enrolled already (revoked ones keep their id)."""


class DeviceKeyTaken(ValueError):
    """The public key sent is another device's already (revoked ones keep theirs): one key, one device."""


class DeviceKeyRefused(ValueError):
    """The public key sent for enrolment is not a public Ed25519 JWK."""


class DeviceUnauthorized(Exception):
    """A sync token that does not prove a device: ``str(exc)`` says why."""


class VoucherNotFound(LookupError):
    """A voucher the store does not know, revoked without naming its deal."""


class NotYourVoucher(PermissionError):
    """The voucher (or the deal named for it) belongs to another merchant."""


class BadWatermark(ValueError):
    """A revocation watermark this backend did not give."""


@dataclass(frozen=True, slots=True)
class Redemption:
    """One redemption as a counter uploads it."""

    voucher_id: str
    deal_id: str
    redeemed_at: datetime
    user_id: str | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RedemptionResult:
    """``ok``: this device's redemption is the first the backend recorded for the voucher.
    ``conflict``: another device's was, named with its time. ``refused``: not stored, its
    ``redeemed_at`` cannot be a time the voucher was redeemed (``reason`` says why)."""

    voucher_id: str
    status: str
    first_device_id: str | None = None
    first_redeemed_at: datetime | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Revocations:
    vouchers: list[str]
    deals: list[str]
    watermark: str | None
    """Give it back at the next sync (``revocations_after``); None while the merchant has none."""
    more: bool
    """True when more revocations wait than one answer carries: sync again at once."""


@dataclass(frozen=True, slots=True)
class KeySet:
    """The voucher verification keys a counter is sent, and until when it may trust them."""

    keys: list[dict[str, Any]]
    """JWKs (RFC 7517): every key that may still have live vouchers."""
    issued_at: datetime
    valid_until: datetime


@dataclass(frozen=True, slots=True)
class SyncAnswer:
    """What one sync tells a counter, in the shape of the public answer (the API reads it as is)."""

    results: list[RedemptionResult]
    keys: KeySet
    revocations: Revocations
    peers: list[DeviceRecord]
    """The merchant's other active counters (each with ``device_id`` and ``public_key``)."""
    server_time: datetime


@dataclass(frozen=True, slots=True)
class VoucherRevocation:
    voucher_id: str
    deal_id: str | None
    merchant_id: str
    revoked_at: datetime


def implausible_time(redemption: Redemption, now: datetime) -> str | None:
    """Why ``redeemed_at`` cannot be when the voucher was redeemed, or None when it can: after the
    backend's clock (with ``REDEEMED_AT_SKEW``), after the voucher expired (with the most leeway a
    counter may have), or before the earliest moment a voucher of that expiry could be issued."""
    at = redemption.redeemed_at
    if at > now + REDEEMED_AT_SKEW:
        return f"redeemed_at is after the backend's time ({_text(now)}) by more than {REDEEMED_AT_SKEW}"
    expires_at = redemption.expires_at
    if expires_at is None:
        return None
    if at > expires_at + timedelta(seconds=MAX_LEEWAY_SECONDS):
        return f"redeemed_at is more than {MAX_LEEWAY_SECONDS} s after the voucher's expires_at"
    if at < expires_at - timedelta(seconds=MAX_VOUCHER_LIFETIME_SECONDS + MAX_LEEWAY_SECONDS):
        return "redeemed_at is before a voucher of that expires_at could be issued"
    return None


def _text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@cache
def _decoy_key() -> ed25519.Ed25519PublicKey:
    """A key no device holds: a token naming an unknown device is checked against it, so it is
    refused with the words (and the work) of a forged one and the 401 does not tell which ids exist."""
    return ed25519.Ed25519PrivateKey.generate().public_key()


def parse_watermark(watermark: str | None) -> int:
    """The ``seq`` a watermark stands for (0: from the start)."""
    if watermark is None:
        return 0
    if not watermark.isascii() or not watermark.isdigit() or len(watermark) > 18:
        raise BadWatermark(f"revocations_after: {watermark[:40]!r} is not a watermark this backend gave")
    return int(watermark)


class DeviceService:
    def __init__(
        self,
        store: DocumentStore,
        keys: Callable[[], dict[str, Any]],
        keyset_valid_seconds: int,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        outbox: Outbox | None = None,
    ) -> None:
        self.store = store
        self.outbox = outbox
        """Where a voucher issued moments ago is known before the store has it (its outbox)."""
        self.keys = keys
        """The voucher key set (JWKS) to send: every key that may still have live vouchers."""
        self.keyset_valid = timedelta(seconds=keyset_valid_seconds)
        self.now = now

    def enrol(
        self, merchant_id: str, device_id: str, public_key: Any, named_merchant: str | None = None
    ) -> DeviceRecord:
        """Enrol a counter of ``merchant_id`` with its public key."""
        if named_merchant is not None and named_merchant != merchant_id:
            raise NotYourDevice(f"the API key is merchant {merchant_id!r}'s, not {named_merchant[:64]!r}'s")
        if not DEVICE_ID.fullmatch(device_id):
            raise DeviceKeyRefused(f"device_id: use {DEVICE_ID_RULE}")
        try:
            parse_public_jwk(public_key)
        except DeviceTokenError as exc:
            raise DeviceKeyRefused(str(exc)) from None
        device = DeviceRecord(
            device_id=device_id,
            merchant_id=merchant_id,
            public_key={name: public_key[name] for name in ("kty", "crv", "x")},
            status=DeviceStatus.ACTIVE,
            enrolled_at=self.now(),
        )
        try:
            self.store.add_device(device)
        except DuplicateError:
            if self.store.get_device(device_id) is not None:
                raise DeviceIdTaken(f"device {device_id!r} is enrolled already; choose another id") from None
            raise DeviceKeyTaken(
                "public_key is another device's already: make a new key pair for each device"
            ) from None
        log.info("device enrolled", extra={"device_id": device_id, "merchant_id": merchant_id})
        return self.store.get_device(device_id) or device

    def revoke(self, merchant_id: str, device_id: str) -> DeviceRecord:
        """Revoke a device: its sync tokens are refused from now on. Repeating it is harmless."""
        self._own_device(merchant_id, device_id)
        revoked = self.store.set_device_status(device_id, DeviceStatus.REVOKED, self.now())
        if revoked is None:
            raise DeviceNotFound(f"no device {device_id[:64]!r}")
        log.warning("device revoked", extra={"device_id": device_id, "merchant_id": merchant_id})
        return revoked

    def authenticate(self, token: str, audience: str) -> DeviceRecord:
        """The enrolled, active device that signed ``token`` for ``audience``; the token's ``jti``
        is used up. ``DeviceUnauthorized`` otherwise (nothing is used up then)."""
        try:
            device = self.store.get_device(device_of_token(token))
            key = _decoy_key() if device is None else parse_public_jwk(device.public_key)
            claims = read_device_token(token, key, audience, now=self.now().timestamp())
            if device is None:  # never: nobody holds the decoy's private half
                raise DeviceTokenError("the device token's signature does not verify with the enrolled key")
        except DeviceTokenError as exc:
            raise DeviceUnauthorized(str(exc)) from None
        if device.status is not DeviceStatus.ACTIVE:
            raise DeviceUnauthorized(f"device {device.device_id!r} is revoked")
        keep_until = datetime.fromtimestamp(claims.expires_at + DEVICE_TOKEN_LEEWAY_SECONDS, UTC)
        if not self.store.use_token_id(device.device_id, claims.token_id, keep_until, self.now()):
            raise DeviceUnauthorized("the device token was used before: make a new one (new jti) per request")
        return device

    def sync(
        self, device: DeviceRecord, redemptions: Sequence[Redemption], watermark: str | None
    ) -> SyncAnswer:
        """Store the device's redemptions and tell it what it needs to verify offline."""
        after = parse_watermark(watermark)
        now = self.now()
        refused = {r.voucher_id: why for r in redemptions if (why := implausible_time(r, now))}
        records = [
            RedemptionRecord(
                voucher_id=r.voucher_id,
                device_id=device.device_id,
                merchant_id=device.merchant_id,
                deal_id=r.deal_id,
                redeemed_at=r.redeemed_at,
                received_at=now,
                user_id=r.user_id,
                expires_at=r.expires_at,
            )
            for r in redemptions
            if r.voucher_id not in refused
        ]
        firsts = self.store.save_redemptions(records)
        self.store.record_sync(device.device_id, now)  # the merchant's console shows it
        results = [
            RedemptionResult(r.voucher_id, "refused", reason=refused[r.voucher_id])
            if r.voucher_id in refused
            else self._result(device.device_id, firsts[r.voucher_id])
            for r in redemptions
        ]
        if refused:
            log.warning(
                "redemptions refused: implausible redeemed_at",
                extra={
                    "device_id": device.device_id,
                    "merchant_id": device.merchant_id,
                    "count": len(refused),
                },
            )
        conflicts = sum(result.status == "conflict" for result in results)
        if conflicts:
            log.warning(
                "vouchers redeemed at another device first",
                extra={"device_id": device.device_id, "merchant_id": device.merchant_id, "count": conflicts},
            )
        return SyncAnswer(
            results=results,
            keys=KeySet(self.keys()["keys"], now, now + self.keyset_valid),
            revocations=self._revocations(device.merchant_id, after),
            peers=[
                peer
                for peer in self.store.devices_of_merchant(device.merchant_id)
                if peer.status is DeviceStatus.ACTIVE and peer.device_id != device.device_id
            ],
            server_time=now,
        )

    def conflicts(
        self, merchant_id: str, limit: int, after: str | None = None
    ) -> list[list[RedemptionRecord]]:
        """The merchant's vouchers redeemed at more than one device, each with every redemption."""
        return self.store.conflicts_of_merchant(merchant_id, limit, after)

    def revoke_voucher(
        self, merchant_id: str, voucher_id: str, deal_id: str | None = None
    ) -> VoucherRevocation:
        """Revoke one voucher: every counter of the merchant refuses it after its next sync.

        The store knows a voucher once the persist worker has written it; a voucher issued a
        moment ago may not be there yet, so the merchant may name its deal instead (which must
        be the merchant's), and the claim gate's outbox of that deal is searched for it. A
        voucher neither holds was not issued here (a typo): ``VoucherNotFound``, nothing revoked.
        A known voucher's deal must match the one named.

        The store is read again after the outbox: where the workers run in the API process, an
        event leaves the outbox only once its voucher is stored, so a voucher stored between
        the first two reads is found then. (With RabbitMQ it may be in the broker's queue
        between the two; the 404 says to retry shortly.)"""
        voucher = self.store.get_voucher(voucher_id) or self._on_its_way(merchant_id, voucher_id, deal_id)
        if voucher is not None:
            if voucher.merchant_id != merchant_id:
                raise NotYourVoucher(f"voucher {voucher_id!r} belongs to another merchant")
            if deal_id is not None and deal_id != voucher.deal_id:
                raise NotYourVoucher(f"voucher {voucher_id!r} is not of deal {deal_id[:64]!r}")
            deal_id = voucher.deal_id
        record = self.store.add_revocation(merchant_id, RevocationKind.VOUCHER, voucher_id, self.now())
        log.info("voucher revoked", extra={"voucher_id": voucher_id, "merchant_id": merchant_id})
        return VoucherRevocation(voucher_id, deal_id, merchant_id, record.revoked_at)

    def _on_its_way(self, merchant_id: str, voucher_id: str, deal_id: str | None) -> VoucherRecord | None:
        """A voucher the store did not hold at the first read: None while its claim event is in
        the outbox of the merchant's deal ``deal_id``, the voucher if the store holds it by now;
        ``VoucherNotFound`` (or ``NotYourVoucher`` for another merchant's deal) otherwise."""
        if deal_id is None:
            raise VoucherNotFound(
                f"no voucher {voucher_id[:64]!r} is stored (yet): if it was issued moments ago, "
                'name its deal in the body: {"deal_id": "..."}'
            )
        deal = self.store.get_deal(deal_id)
        if deal is None:
            raise VoucherNotFound(f"no deal {deal_id[:64]!r}")
        if deal.merchant_id != merchant_id:
            raise NotYourVoucher(f"deal {deal_id!r} belongs to another merchant")
        if self._in_outbox(deal_id, voucher_id):
            return None
        voucher = self.store.get_voucher(voucher_id)
        if voucher is None:
            raise VoucherNotFound(
                f"no voucher {voucher_id[:64]!r} of deal {deal_id!r} was issued here (check the id; "
                "one issued in the last seconds may still be on its way to the store: retry shortly)"
            )
        return voucher

    def _in_outbox(self, deal_id: str, voucher_id: str) -> bool:
        """Whether the gate's outbox of the deal holds the claim event of the voucher (not yet
        relayed to the store)."""
        if self.outbox is None:
            return False
        after = None
        while events := self.outbox.read_outbox(after, OUTBOX_PAGE, deal_id=deal_id):
            if any(
                e.payload.get("type", CLAIM_ISSUED) == CLAIM_ISSUED
                and e.payload.get("voucher_id") == voucher_id
                for e in events
            ):
                return True
            if len(events) < OUTBOX_PAGE:
                return False
            after = events[-1].event_id
        return False

    def _own_device(self, merchant_id: str, device_id: str) -> DeviceRecord:
        device = self.store.get_device(device_id)
        if device is None:
            raise DeviceNotFound(f"no device {device_id[:64]!r}")
        if device.merchant_id != merchant_id:
            raise NotYourDevice(f"device {device_id!r} belongs to another merchant")
        return device

    @staticmethod
    def _result(device_id: str, first: RedemptionRecord) -> RedemptionResult:
        if first.device_id == device_id:
            return RedemptionResult(first.voucher_id, "ok")
        return RedemptionResult(first.voucher_id, "conflict", first.device_id, first.redeemed_at)

    def _revocations(self, merchant_id: str, after: int) -> Revocations:
        found: list[RevocationRecord] = self.store.revocations_after(
            merchant_id, after, MAX_REVOCATIONS_PER_SYNC + 1
        )
        shown = found[:MAX_REVOCATIONS_PER_SYNC]
        if (
            not shown
            and after
            and [r.seq for r in self.store.revocations_after(merchant_id, after - 1, 1)] != [after]
        ):
            # A watermark past the merchant's last revocation was not given here (another
            # backend, or a store restored from an older backup): start over rather than skip.
            raise BadWatermark(
                f"revocations_after: {after} is not a watermark this backend gave; send null to start over"
            )
        last = shown[-1].seq if shown else after
        return Revocations(
            vouchers=[r.target_id for r in shown if r.kind is RevocationKind.VOUCHER],
            deals=[r.target_id for r in shown if r.kind is RevocationKind.DEAL],
            watermark=str(last) if last else None,
            more=len(found) > MAX_REVOCATIONS_PER_SYNC,
        )
