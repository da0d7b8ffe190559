"""The document store's contract, the same on SQLite and on MongoDB (SecantusDB here, or the
server of SHOPCARDD_MONGODB_URI)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from jwt.utils import base64url_encode

from shopcardd_backend.stores.base import (
    ClaimTally,
    ConsoleSession,
    DealRecord,
    DealStatus,
    DeviceActivity,
    DeviceRecord,
    DeviceStatus,
    DocumentStore,
    DuplicateError,
    MerchantRecord,
    MinuteCounts,
    NoticeCounts,
    NoticeOutcome,
    RedemptionRecord,
    RevocationKind,
    RevocationRecord,
    StoreUnavailable,
    VoucherCounts,
    VoucherRecord,
    utc_ms,
)

MakeStore = Callable[..., Any]
T0 = datetime(2026, 11, 25, 12, 0, 0, 123000, tzinfo=UTC)


def merchant(merchant_id: str = "m1", key_hash: str = "hash-1") -> MerchantRecord:
    return MerchantRecord(merchant_id, key_hash, T0)


def deal(deal_id: str = "d1", **changes: Any) -> DealRecord:
    record = DealRecord(
        deal_id, "m1", "Two coffees", 100, 2, 3600, T0, T0 + timedelta(hours=2), DealStatus.ACTIVE, T0
    )
    return replace(record, **changes)


def voucher(voucher_id: str = "v1", **changes: Any) -> VoucherRecord:
    record = VoucherRecord(voucher_id, "d1", "m1", "u1", f"key-{voucher_id}", T0, T0 + timedelta(hours=1))
    return replace(record, **changes)


def test_a_merchant_is_found_by_its_key_hash(store: DocumentStore) -> None:
    store.add_merchant(merchant("m1", "hash-1"))
    store.add_merchant(merchant("m2", "hash-2"))
    assert store.merchant_for_key_hash("hash-2") == "m2"
    assert store.merchant_for_key_hash("hash-3") is None


@pytest.mark.parametrize(
    "other", [merchant("m1", "hash-2"), merchant("m2", "hash-1")], ids=["id", "key-hash"]
)
def test_a_taken_merchant_id_or_key_hash_is_a_duplicate(store: DocumentStore, other: MerchantRecord) -> None:
    store.add_merchant(merchant("m1", "hash-1"))
    with pytest.raises(DuplicateError):
        store.add_merchant(other)
    assert store.merchant_for_key_hash("hash-1") == "m1"


def test_a_deal_reads_back_as_it_was_stored(store: DocumentStore) -> None:
    store.add_deal(deal("d1"))
    store.add_deal(deal("d2", starts_at=None, ends_at=None, title="Open-ended"))
    assert store.get_deal("d1") == deal("d1")
    assert store.get_deal("d2") == deal("d2", starts_at=None, ends_at=None, title="Open-ended")
    assert store.get_deal("nope") is None


def test_times_come_back_in_utc_to_the_millisecond(store: DocumentStore) -> None:
    paris = datetime(2026, 11, 25, 13, 0, 0, 123456, tzinfo=UTC).astimezone(ZoneInfo("Europe/Paris"))
    store.add_deal(deal("d1", starts_at=paris, ends_at=datetime(2026, 11, 26, 8, 0, 0)))
    stored = store.get_deal("d1")
    assert stored is not None
    assert stored.starts_at == datetime(2026, 11, 25, 13, 0, 0, 123000, tzinfo=UTC)
    assert stored.starts_at.utcoffset() == timedelta(0)
    assert stored.ends_at == datetime(2026, 11, 26, 8, 0, 0, tzinfo=UTC), "a naive time is taken as UTC"


def test_a_taken_deal_id_is_a_duplicate(store: DocumentStore) -> None:
    store.add_deal(deal("d1"))
    with pytest.raises(DuplicateError):
        store.add_deal(deal("d1", title="Another"))
    assert store.get_deal("d1") == deal("d1")


def test_cancelling_a_deal_returns_and_keeps_the_new_status(store: DocumentStore) -> None:
    store.add_deal(deal("d1"))
    assert store.set_deal_status("d1", DealStatus.CANCELLED) == deal("d1", status=DealStatus.CANCELLED)
    assert store.get_deal("d1") == deal("d1", status=DealStatus.CANCELLED)
    assert store.set_deal_status("nope", DealStatus.CANCELLED) is None


def test_saving_a_voucher_twice_changes_nothing(store: DocumentStore) -> None:
    assert store.save_voucher(voucher("v1")) is True
    assert store.save_voucher(voucher("v1")) is False
    assert store.vouchers_of_deal("d1") == [voucher("v1")]


@pytest.mark.parametrize(
    "clash",
    [voucher("v1", user_id="u2", idempotency_key="other"), voucher("v2", idempotency_key="key-v1")],
    ids=["same-id-other-contents", "same-claim-other-id"],
)
def test_a_different_voucher_for_the_same_id_or_claim_is_a_duplicate(
    store: DocumentStore, clash: VoucherRecord
) -> None:
    store.save_voucher(voucher("v1"))
    with pytest.raises(DuplicateError):
        store.save_voucher(clash)
    assert store.vouchers_of_deal("d1") == [voucher("v1")]


def test_vouchers_of_a_deal_in_issue_order(store: DocumentStore) -> None:
    later = [voucher(f"v{i}", issued_at=T0 + timedelta(seconds=10 - i)) for i in range(5)]
    for record in [*later, voucher("x1", deal_id="d2")]:
        store.save_voucher(record)
    assert store.vouchers_of_deal("d1") == sorted(later, key=lambda v: v.issued_at)
    assert store.vouchers_of_deal("d2") == [voucher("x1", deal_id="d2")]
    assert store.vouchers_of_deal("nope") == []


MINUTE = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def tally(event_id: str, deal_id: str = "d1", minute: int = 0, **counts: int) -> ClaimTally:
    return ClaimTally(event_id, deal_id, MINUTE + timedelta(minutes=minute), **counts)


def test_claims_by_minute_count_the_vouchers_issued_and_sum_the_refusals_oldest_first(
    store: DocumentStore,
) -> None:
    at = MINUTE + timedelta(seconds=59, milliseconds=999)
    store.save_vouchers(
        [
            voucher("v2", issued_at=MINUTE + timedelta(minutes=1)),
            voucher("v1", issued_at=at),
            voucher("v3", issued_at=MINUTE + timedelta(minutes=3, seconds=1)),
            voucher("x1", deal_id="d2"),
        ]
    )
    store.add_claim_tallies(
        [
            tally("r1", sold_out=3, limit_reached=1),
            tally("r2", minute=1, sold_out=2, sale_not_open=4),
            tally("r3", minute=1, sold_out=1),
            tally("r4", minute=2, sold_out=5),  # a minute with refusals only
            tally("old", minute=2, issued=1),  # an earlier version's tally of an issued claim
        ]
    )
    assert store.claims_by_minute("d1") == [
        MinuteCounts(MINUTE, issued=1, sold_out=3, limit_reached=1, sale_not_open=0),
        MinuteCounts(MINUTE + timedelta(minutes=1), issued=1, sold_out=3, limit_reached=0, sale_not_open=4),
        MinuteCounts(MINUTE + timedelta(minutes=2), issued=0, sold_out=5, limit_reached=0, sale_not_open=0),
        MinuteCounts(MINUTE + timedelta(minutes=3), issued=1, sold_out=0, limit_reached=0, sale_not_open=0),
    ]
    assert store.claims_by_minute("d2") == [MinuteCounts(T0.replace(second=0, microsecond=0), 1, 0, 0, 0)]
    assert store.claims_by_minute("nope") == []


def test_a_tally_recorded_again_counts_once(store: DocumentStore) -> None:
    first = [tally("r1", sold_out=2), tally("r2", limit_reached=1)]
    store.add_claim_tallies(first)
    store.add_claim_tallies([*first, tally("r3", sold_out=1)])
    store.add_claim_tallies(first[:1])
    store.add_claim_tallies([])
    assert store.claims_by_minute("d1") == [
        MinuteCounts(MINUTE, issued=0, sold_out=3, limit_reached=1, sale_not_open=0)
    ]


def test_a_notice_is_taken_once_per_voucher_and_channel(store: DocumentStore) -> None:
    assert store.claim_notice("v1", "email", "d1") is True
    assert store.claim_notice("v1", "email", "d1") is False
    assert store.claim_notice("v1", "sms", "d1") is True, "each channel is taken on its own"
    assert store.claim_notice("v2", "email", "d1") is True


def test_a_released_notice_can_be_taken_again(store: DocumentStore) -> None:
    store.release_notice("v1", "email")  # never taken: harmless
    assert store.claim_notice("v1", "email", "d1") is True
    store.release_notice("v1", "email")
    assert store.claim_notice("v1", "email", "d1") is True
    assert store.claim_notice("v1", "email", "d1") is False


def test_a_deals_notices_are_counted_sent_and_refused_per_channel(store: DocumentStore) -> None:
    sent, refused = NoticeOutcome.SENT, NoticeOutcome.REFUSED
    for voucher_id, channel, deal_id, outcome in [
        ("v1", "email", "d1", sent),
        ("v2", "email", "d1", sent),
        ("v3", "email", "d1", refused),
        ("v1", "sms", "d1", sent),
        ("v4", "email", "d2", sent),  # another deal's
    ]:
        assert store.claim_notice(voucher_id, channel, deal_id)
        store.record_notice(voucher_id, channel, outcome)
    store.claim_notice("v5", "sms", "d1")  # still being sent: neither sent nor refused
    store.claim_notice("v6", "email", "d1")
    store.release_notice("v6", "email")  # given back after a failed try
    store.record_notice("v7", "email", sent)  # never taken: nothing to count
    store.record_notice("v1", "sms", sent)  # said twice: counted once
    assert store.notices_of("d1") == {"email": NoticeCounts(sent=2, refused=1), "sms": NoticeCounts(sent=1)}
    assert store.notices_of("d2") == {"email": NoticeCounts(sent=1)}
    assert store.notices_of("d3") == {}


def test_a_notices_table_of_an_older_version_gets_its_deal_and_outcome(tmp_path: Any) -> None:
    import sqlite3

    from shopcardd_backend.stores.sqlite import SqliteDocumentStore

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE notices (voucher_id TEXT NOT NULL, channel TEXT NOT NULL, "
            "taken_at TEXT NOT NULL, PRIMARY KEY (voucher_id, channel))"
        )
        old.execute("INSERT INTO notices VALUES ('v0', 'email', '2026-11-25T12:00:00.000+00:00')")
    old.close()
    with SqliteDocumentStore(path) as store:
        assert store.claim_notice("v0", "email", "d1") is False, "a notice sent before stays sent"
        assert store.claim_notice("v1", "email", "d1") is True
        store.record_notice("v1", "email", NoticeOutcome.SENT)
        assert store.notices_of("d1") == {"email": NoticeCounts(sent=1)}


def test_records_survive_reopening(make_store: MakeStore, store_kind: str, tmp_path: Any) -> None:
    where = {"path": tmp_path / "reopen.sqlite3"} if store_kind == "sqlite" else {"database": "reopen"}
    with make_store(store_kind, **where) as first:
        first.add_merchant(merchant())
        first.add_deal(deal())
        first.save_voucher(voucher())
        first.add_claim_tallies([tally("r1", sold_out=1)])
        first.claim_notice("v1", "email", "d1")
        first.record_notice("v1", "email", NoticeOutcome.REFUSED)
    again = make_store(store_kind, **where)
    assert again.merchant_for_key_hash("hash-1") == "m1"
    assert again.get_deal("d1") == deal()
    assert again.vouchers_of_deal("d1") == [voucher()]
    assert again.claims_by_minute("d1") == [MinuteCounts(MINUTE, 1, 1, 0, 0)]
    assert again.claim_notice("v1", "email", "d1") is False
    assert again.notices_of("d1") == {"email": NoticeCounts(refused=1)}


def test_check_passes_on_an_open_store_and_fails_on_a_closed_one(
    make_store: MakeStore, store_kind: str
) -> None:
    store = make_store(store_kind)
    store.check()
    store.close()
    with pytest.raises(StoreUnavailable):
        store.check()


def test_an_unreachable_mongodb_raises_store_unavailable(unused_port: int) -> None:
    from shopcardd_backend.stores.mongo import MongoDocumentStore

    with MongoDocumentStore(
        f"mongodb://127.0.0.1:{unused_port}/", "nowhere", server_selection_timeout_ms=200
    ) as store:
        for call in [
            store.check,
            store.ensure_indexes,
            lambda: store.get_deal("d1"),
            lambda: store.add_deal(deal()),
        ]:
            with pytest.raises(StoreUnavailable) as raised:
                call()
            assert raised.value.retry_after >= 1


@pytest.mark.mongo
def test_in_mongodb_a_voucher_id_is_its_document_id(make_store: MakeStore, mongodb_uri: str) -> None:
    import pymongo

    database = "ids"
    store = make_store("mongo", database=database)
    store.save_voucher(voucher("v1"))
    with pymongo.MongoClient(mongodb_uri, serverSelectionTimeoutMS=2000) as client:
        db = client[store.database_name]
        assert db["vouchers"].find_one({"_id": "v1"}, {"_id": 1, "deal_id": 1}) == {
            "_id": "v1",
            "deal_id": "d1",
        }
        unique = [ix["key"] for ix in db["merchants"].list_indexes() if ix.get("unique")]
        assert [("api_key_hash", 1)] in [list(key.items()) for key in unique]
        tally_keys = [list(ix["key"].items()) for ix in db["claim_tallies"].list_indexes()]
        assert [("deal_id", 1), ("minute", 1)] in tally_keys


@pytest.mark.mongo
def test_in_mongodb_a_notice_whose_insert_the_driver_sent_twice_is_still_taken(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pymongo sends a write again when its answer was lost (a retryable write); a server that
    does not recognise the retry answers the second with a duplicate key. The notice was taken
    by this call all the same: taking it must say so, or the customer is never told. Another
    delivery of the event still finds it taken."""
    store: Any = make_store("mongo")
    notices = store._notices
    insert_once = notices.insert_one

    def insert_whose_answer_was_lost(document: dict[str, Any]) -> Any:
        insert_once(document)  # stored; its answer lost on the way back
        return insert_once(document)  # the driver's retry: duplicate key

    monkeypatch.setattr(notices, "insert_one", insert_whose_answer_was_lost)
    assert store.claim_notice("v1", "email", "d1") is True
    assert store.claim_notice("v1", "email", "d1") is False


# --- Devices, redemptions, revocations and used device-token ids (device enrolment and sync) ---


def device(device_id: str = "c1", merchant_id: str = "m1", key_of: str | None = None) -> DeviceRecord:
    """A device whose public key is its own (derived from ``key_of``, by default its id)."""
    x = base64url_encode(hashlib.sha256((key_of or device_id).encode()).digest()).decode()
    return DeviceRecord(
        device_id, merchant_id, {"kty": "OKP", "crv": "Ed25519", "x": x}, DeviceStatus.ACTIVE, T0
    )


def redemption(voucher_id: str, device_id: str = "c1", received: int = 0, **changes: Any) -> RedemptionRecord:
    record = RedemptionRecord(
        voucher_id, device_id, "m1", "d1", T0, T0 + timedelta(seconds=received), "u1", T0 + timedelta(hours=1)
    )
    return replace(record, **changes)


def test_a_device_reads_back_and_its_id_is_taken_for_good(store: DocumentStore) -> None:
    store.add_device(device("c1"))
    store.add_device(device("c2"))
    store.add_device(device("c3", merchant_id="m2"))
    assert store.get_device("c1") == device("c1")
    assert store.get_device("nope") is None
    assert [d.device_id for d in store.devices_of_merchant("m1")] == ["c1", "c2"]
    with pytest.raises(DuplicateError):
        store.add_device(device("c1", merchant_id="m2"))

    revoked = store.set_device_status("c1", DeviceStatus.REVOKED, T0 + timedelta(hours=1))
    assert revoked == replace(device("c1"), status=DeviceStatus.REVOKED, revoked_at=T0 + timedelta(hours=1))
    again = store.set_device_status("c1", DeviceStatus.REVOKED, T0 + timedelta(hours=2))
    assert again == revoked, "revoking again keeps the first time"
    assert store.set_device_status("nope", DeviceStatus.REVOKED, T0) is None
    with pytest.raises(DuplicateError):
        store.add_device(device("c1"))


def test_a_device_key_is_one_device_s_for_good(store: DocumentStore) -> None:
    store.add_device(device("c1"))
    store.set_device_status("c1", DeviceStatus.REVOKED, T0)
    for merchant in ("m1", "m2"):
        with pytest.raises(DuplicateError):
            store.add_device(device("c2", merchant, key_of="c1"))
    assert store.get_device("c2") is None


def test_a_device_token_id_is_used_once_until_it_is_forgotten(store: DocumentStore) -> None:
    keep = T0 + timedelta(minutes=10)
    assert store.use_token_id("c1", "jti-1", keep, now=T0)
    assert not store.use_token_id("c1", "jti-1", keep, now=T0 + timedelta(minutes=5))
    assert store.use_token_id("c2", "jti-1", keep, now=T0), "token ids are per device"
    assert store.use_token_id("c1", "jti-1", keep + timedelta(minutes=10), now=keep + timedelta(seconds=1))


def test_redemptions_are_stored_once_and_the_first_recorded_wins(store: DocumentStore) -> None:
    first = store.save_redemptions([redemption("v1"), redemption("v2")])
    assert first == {"v1": redemption("v1"), "v2": redemption("v2")}
    again = store.save_redemptions([redemption("v1", received=60), redemption("v2", received=60)])
    assert again == first, "a batch sent twice keeps what was stored the first time"
    assert store.count_redemptions("m1") == 2

    later = store.save_redemptions([redemption("v2", "c2", received=30), redemption("v3", "c2", received=30)])
    assert later == {"v2": redemption("v2"), "v3": redemption("v3", "c2", received=30)}
    assert store.count_redemptions("m1") == 4
    assert store.count_redemptions("m2") == 0


def test_conflicts_are_vouchers_redeemed_at_several_devices(store: DocumentStore) -> None:
    store.save_redemptions([redemption(f"v{i}") for i in range(5)])
    store.save_redemptions([redemption("v3", "c2", received=20), redemption("v1", "c2", received=10)])
    store.save_redemptions([redemption("v3", "c3", received=5)])
    store.save_redemptions(
        [redemption("v9", "c9", merchant_id="m2"), redemption("v9", "c8", merchant_id="m2")]
    )
    conflicts = store.conflicts_of_merchant("m1", limit=10)
    assert [[(r.voucher_id, r.device_id) for r in group] for group in conflicts] == [
        [("v1", "c1"), ("v1", "c2")],
        [("v3", "c1"), ("v3", "c3"), ("v3", "c2")],
    ]
    assert [group[0].voucher_id for group in store.conflicts_of_merchant("m1", limit=1)] == ["v1"]
    assert [group[0].voucher_id for group in store.conflicts_of_merchant("m1", 10, after="v1")] == ["v3"]


def test_revocations_are_numbered_per_merchant_once_per_target(store: DocumentStore) -> None:
    a = store.add_revocation("m1", RevocationKind.VOUCHER, "v1", T0)
    b = store.add_revocation("m1", RevocationKind.DEAL, "d1", T0 + timedelta(seconds=1))
    c = store.add_revocation("m2", RevocationKind.VOUCHER, "v1", T0)
    assert (a.seq, b.seq, c.seq) == (1, 2, 1)
    assert store.add_revocation("m1", RevocationKind.VOUCHER, "v1", T0 + timedelta(hours=1)) == a
    assert store.add_revocation("m1", RevocationKind.VOUCHER, "d1", T0).seq == 3, "kinds are apart"
    assert store.revocations_after("m1", 0, limit=10) == [
        a,
        b,
        RevocationRecord("m1", RevocationKind.VOUCHER, "d1", T0, 3),
    ]
    assert [r.seq for r in store.revocations_after("m1", 1, limit=1)] == [2]
    assert store.revocations_after("m1", 3, limit=10) == []


def test_revocations_from_threads_get_every_seq_once(store: DocumentStore) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        made = list(
            pool.map(
                lambda i: store.add_revocation("m1", RevocationKind.VOUCHER, f"v{i % 20}", T0), range(40)
            )
        )
    assert sorted({r.seq for r in made}) == list(range(1, 21))
    assert [r.seq for r in store.revocations_after("m1", 0, 100)] == list(range(1, 21))


def test_a_stored_voucher_is_found_by_its_id(store: DocumentStore) -> None:
    store.save_voucher(voucher("v1"))
    assert store.get_voucher("v1") == voucher("v1")
    assert store.get_voucher("v2") is None


# --- What the merchant reads, API key rotation, console sessions ---


def test_a_deals_vouchers_page_by_id_and_count_with_redemptions(store: DocumentStore) -> None:
    store.save_vouchers(
        [voucher(f"v{n}") for n in (3, 1, 2)] + [voucher("w1", deal_id="d2", idempotency_key="k")]
    )
    assert [v.voucher_id for v in store.vouchers_page("d1", 2)] == ["v1", "v2"]
    assert [v.voucher_id for v in store.vouchers_page("d1", 2, after="v2")] == ["v3"]
    store.save_redemptions(
        [redemption("v1", "c1"), redemption("v1", "c2", received=1), redemption("v2", "c1")]
    )
    assert store.voucher_counts("d1") == VoucherCounts(issued=3, redeemed=2)
    assert store.voucher_counts("d2") == VoucherCounts(issued=1, redeemed=0)


def test_a_vouchers_redemptions_come_in_the_order_recorded(store: DocumentStore) -> None:
    store.save_redemptions([redemption("v1", "c2", received=5), redemption("v1", "c1", received=9)])
    assert [r.device_id for r in store.redemptions_of_voucher("v1")] == ["c2", "c1"]
    assert store.redemptions_of_voucher("v9") == []


def test_a_revocation_is_found_by_its_target(store: DocumentStore) -> None:
    store.add_revocation("m1", RevocationKind.VOUCHER, "v1", T0)
    found = store.revocation_of("m1", RevocationKind.VOUCHER, "v1")
    assert found is not None and found.revoked_at == T0
    assert store.revocation_of("m1", RevocationKind.DEAL, "v1") is None
    assert store.revocation_of("m2", RevocationKind.VOUCHER, "v1") is None


def test_device_activity_is_its_last_sync_and_redemptions(store: DocumentStore) -> None:
    for device_id in ("c1", "c2", "c3"):
        store.add_device(device(device_id))
    store.record_sync("c1", T0 + timedelta(minutes=5))
    store.record_sync("c1", T0)  # a late answer never moves the last sync back
    store.save_redemptions([redemption("v1", "c1"), redemption("v2", "c2")])
    assert store.device_activity("m1") == {
        "c1": DeviceActivity("c1", T0 + timedelta(minutes=5), 1),
        "c2": DeviceActivity("c2", None, 1),
    }
    assert store.device_activity("m2") == {}


def test_a_rotated_key_works_until_its_grace_period_ends(store: DocumentStore) -> None:
    store.add_merchant(merchant("m1", "old"))
    assert store.rotate_api_key("m1", "new", old_valid_until=T0 + timedelta(hours=1))
    assert store.merchant_for_key_hash("new") == "m1"
    assert store.merchant_for_key_hash("old", now=T0) == "m1"
    assert store.merchant_for_key_hash("old", now=T0 + timedelta(hours=1)) is None
    assert not store.rotate_api_key("m9", "other", T0)


def test_a_console_session_lasts_until_it_expires_or_ends(store: DocumentStore) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    store.add_console_session(ConsoleSession("s1", "m1", later))
    assert store.console_session("s1", later - timedelta(seconds=1)) == ConsoleSession(
        "s1", "m1", utc_ms(later)
    )
    assert store.console_session("s1", later) is None
    store.end_console_session("s1")
    assert store.console_session("s1", later - timedelta(hours=1)) is None
    store.end_console_session("s1")  # harmless again
