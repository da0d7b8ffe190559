"""The ledger: durable, once-only redemptions; rejections kept apart, capped and fingerprinted; sync
state; retention; a damaged ledger stops start-up and is salvaged."""

from __future__ import annotations

import configparser
import json
import re
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from shopcardd_device.cli import EXIT_USAGE
from shopcardd_device.config import DeviceConfig
from shopcardd_device.counter import Counter
from shopcardd_device.errors import DeviceError, LedgerDamaged, LedgerError
from shopcardd_device.inputs import fingerprint
from shopcardd_device.ledger import SCHEMA, BackendVerdict, Ledger, SyncRecord
from shopcardd_voucher import KeySet, Reason

from .conftest import Keys, Mint, WriteConfig, device_command

VERIFIER_UNIT = Path(__file__).parents[2] / "systemd" / "shopcardd-verifier.service"


def test_the_ledger_is_wal_with_durable_commits(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def restart_prevented() -> list[str]:
    """The exit codes on which systemd does not restart the scan loop (the unit's own setting)."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(VERIFIER_UNIT)
    return unit["Service"]["RestartPreventExitStatus"].split()


def test_a_damaged_ledger_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    raw = bytearray(path.read_bytes())
    raw[100:4096] = b"\xff" * (4096 - 100)  # scribble over the schema page
    path.write_bytes(bytes(raw))
    with pytest.raises(LedgerDamaged, match=r"damaged|integrity"):
        Ledger(path)
    assert issubclass(LedgerDamaged, LedgerError) and issubclass(LedgerError, DeviceError)


def redeemed_at_a_counter(
    write_config: WriteConfig, mint: Mint, count: int
) -> tuple[Path, DeviceConfig, list[str]]:
    """A counter's config (its path and itself) and ``count`` vouchers it accepted."""
    config_path = write_config('[camera]\nsource = "keyboard"')
    config = DeviceConfig.load(config_path)
    tokens = [mint() for _ in range(count)]
    with Counter.open(config) as counter:
        assert all(counter.scan(token).is_accepted for token in tokens)
    return config_path, config, tokens


def test_a_ledger_damaged_in_the_middle_stops_the_counter_and_salvage_keeps_what_can_be_read(
    write_config: WriteConfig, mint: Mint
) -> None:
    """Bytes overwritten in the middle of a ledger of many redemptions: the counter refuses to
    start (an exit code the unit does not restart on) and says how to recover; salvage keeps the
    damaged file, byte for byte, and every redemption it read is still refused as already used."""
    config_path, config, tokens = redeemed_at_a_counter(write_config, mint, 1500)
    path = config.ledger_path
    damaged = bytearray(path.read_bytes())
    middle = len(damaged) // 4096 // 2 * 4096
    damaged[middle : middle + 4096] = b"\xa5" * 4096  # one page in the middle scribbled over
    path.write_bytes(bytes(damaged))

    started = device_command("run", "--config", config_path, stdin="")
    assert started.returncode == EXIT_USAGE and str(EXIT_USAGE) in restart_prevented()
    assert f"ledger {path} is damaged" in started.stderr
    assert f"shopcardd-device salvage --config {config_path}" in started.stderr
    assert "Traceback" not in started.stderr

    salvaged = device_command("salvage", "--config", config_path)
    assert salvaged.returncode == 0, salvaged.stderr
    [kept] = path.parent.glob("ledger.sqlite3.damaged-*")
    assert kept.read_bytes() == damaged  # kept aside as found, never deleted
    copied = re.search(r"([0-9,]+) rows? of redemptions", salvaged.stdout)
    assert copied, salvaged.stdout
    again = device_command("verify", "--config", config_path, "--json", "-", stdin="\n".join(tokens))
    results = [json.loads(line)["result"] for line in again.stdout.splitlines()]
    assert results.count("already_redeemed") == int(copied[1].replace(",", "")) >= 0.9 * len(tokens)
    lost = re.search(r"([0-9]+) redemptions? named by an index could not be read", salvaged.stdout)
    assert results.count("revoked") == (int(lost[1]) if lost else 0)  # their ids survived: still refused
    assert "accepted" not in results  # no voucher redeemed here is accepted again
    assert device_command("salvage", "--config", config_path).stdout.startswith("ledger ")  # sound now


def test_salvage_reads_a_ledger_whose_first_bytes_were_overwritten_and_refuses_one_it_cannot_read(
    write_config: WriteConfig, mint: Mint
) -> None:
    """With its 16-byte SQLite header gone, a ledger reads as "not a database" though every page
    is sound: salvage puts the header back and keeps every redemption. A ledger of which nothing
    can be read is left as it was, and salvage says so instead of starting the counter afresh."""
    config_path, config, tokens = redeemed_at_a_counter(write_config, mint, 300)
    path = config.ledger_path
    raw = path.read_bytes()
    path.write_bytes(b"\x00" * 16 + raw[16:])
    salvaged = device_command("salvage", "--config", config_path)
    assert salvaged.returncode == 0, salvaged.stderr
    assert "300 rows of redemptions" in salvaged.stdout
    again = device_command("verify", "--config", config_path, "--json", "-", stdin="\n".join(tokens))
    assert {json.loads(line)["result"] for line in again.stdout.splitlines()} == {"already_redeemed"}

    junk = bytes(range(256)) * (len(raw) // 256)
    path.write_bytes(junk)
    refused = device_command("salvage", "--config", config_path)
    assert refused.returncode == EXIT_USAGE
    assert "nothing could be read" in refused.stderr and "Do not start the counter" in refused.stderr
    assert path.read_bytes() == junk  # left as it was: no empty ledger put in its place


def test_a_voucher_is_redeemed_once_and_every_rejection_is_recorded(config: DeviceConfig, mint: Mint) -> None:
    token = mint(user="u-ada")
    with Counter.open(config) as counter:
        assert counter.scan("garbage").reason is Reason.BAD_FORMAT
        assert counter.scan(token).reason is Reason.ACCEPTED  # an earlier bad scan blocks nothing
        assert counter.scan(token).reason is Reason.ALREADY_REDEEMED
        ledger = counter.ledger
        [row] = ledger.redemptions()
        assert (row.device_id, row.deal, row.user, row.result, row.synced_at) == (
            "counter-1",
            "d-espresso",
            "u-ada",
            "accepted",
            None,
        )
        assert [(r.result, r.raw) for r in ledger.rejections()] == [
            ("bad_format", fingerprint("garbage")),
            ("already_redeemed", fingerprint(token)),
        ]
        assert ledger.accepted_count() == 1
        assert ledger.rejected_counts() == {"already_redeemed": 1, "bad_format": 1}


@pytest.mark.slow
def test_junk_scans_cannot_fill_the_disk_and_the_counts_stay_exact(
    write_config: WriteConfig, mint: Mint
) -> None:
    """A phone cycling junk codes (hole 7): the rejection rows are capped, the oldest dropped first,
    each row small whatever the code; ``status`` still counts every rejection; a voucher redeems."""
    config_path = write_config(top="max_rejections = 1000")
    config = DeviceConfig.load(config_path)
    junk = [f"{n:06d}" + "J" * 4000 for n in range(20_000)]  # near the most a QR code holds
    ledger = config.ledger_path  # (its -wal is bounded apart: SQLite checkpoints it every 1,000 pages)
    with Counter.open(config) as counter:
        for code in junk[:2000]:
            counter.scan(code)
        size_at_the_cap = ledger.stat().st_size
        for code in junk[2000:]:
            counter.scan(code)
        assert ledger.stat().st_size <= size_at_the_cap + 64 * 1024  # it stopped growing
        assert ledger.stat().st_size < 1024 * 1024  # 20,000 whole codes would take 80 MB
        kept = counter.ledger.rejections()
        assert [r.raw for r in kept] == [fingerprint(code) for code in junk[-1000:]]  # the newest
        assert counter.scan(mint()).reason is Reason.ACCEPTED
    status = json.loads(device_command("status", "--config", config_path, "--json").stdout)
    assert (status["accepted"], status["rejected"]) == (1, {"bad_format": len(junk)})


def test_a_rejection_keeps_a_fingerprint_and_a_voucher_id_never_a_code_that_could_pass(
    config: DeviceConfig, mint: Mint
) -> None:
    """A genuine voucher refused here may pass later (not yet valid) or elsewhere (another
    merchant): the ledger, which a thief may read, keeps its id, never the token."""
    later, elsewhere = mint(not_before=int(time.time()) + 86_400), mint(merchant="m-else")
    with Counter.open(config) as counter:
        assert counter.scan(later).reason is Reason.NOT_YET_VALID
        assert counter.scan(elsewhere).reason is Reason.WRONG_MERCHANT
        rows = counter.ledger.rejections()
    assert [(r.raw, r.voucher_id is not None) for r in rows] == [
        (fingerprint(later), True),
        (fingerprint(elsewhere), True),
    ]
    stored = b"".join(p.read_bytes() for p in config.ledger_path.parent.glob("ledger.sqlite3*"))
    for token in (later, elsewhere):
        assert token.split(".")[2].encode() not in stored  # not even the signature


def test_processes_opening_a_new_ledger_at_once_all_open_it(tmp_path: Path) -> None:
    """``run``, ``verify`` and ``sync`` may start together on a fresh counter: the first to
    switch the file to WAL holds its lock for a moment, and the others wait, not fail."""
    failures: list[str] = []

    def open_once(path: Path, start: threading.Barrier) -> None:
        start.wait()
        try:
            Ledger(path).close()
        except LedgerError as exc:
            failures.append(str(exc))

    for round_ in range(100):
        start = threading.Barrier(6, timeout=60)
        path = tmp_path / f"{round_}" / "ledger.sqlite3"
        threads = [threading.Thread(target=open_once, args=(path, start)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


def test_two_counters_racing_for_one_voucher_redeem_it_once(config: DeviceConfig, mint: Mint) -> None:
    tokens = [mint() for _ in range(40)]
    results: list[Reason] = []
    start = threading.Barrier(4, timeout=60)  # a cashier that fails to open breaks it: no hang

    def cashier() -> None:
        with Counter.open(config) as counter:  # its own connection, as a second process would have
            start.wait()
            results.extend(counter.scan(token).reason for token in tokens)

    threads = [threading.Thread(target=cashier) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(Reason.ACCEPTED) == len(tokens)
    assert results.count(Reason.ALREADY_REDEEMED) == 3 * len(tokens)
    with Ledger(config.ledger_path) as ledger:
        assert ledger.accepted_count() == len(tokens)


def test_the_unique_key_decides_when_two_counters_both_judged_a_voucher_unused(
    config: DeviceConfig, mint: Mint
) -> None:
    """The race made certain: both read "not redeemed" before either committed."""
    token = mint()
    with Counter.open(config) as first, Counter.open(config) as second:
        first_now, second_now = first.time(), second.time()
        first_verdict, second_verdict = first.judge(token, first_now), second.judge(token, second_now)
        assert first_verdict.reason is second_verdict.reason is Reason.ACCEPTED
        assert first.commit(token, first_verdict, first_now).reason is Reason.ACCEPTED
        assert second.commit(token, second_verdict, second_now).reason is Reason.ALREADY_REDEEMED
        assert first.ledger.accepted_count() == 1
        assert [r.result for r in first.ledger.rejections()] == ["already_redeemed"]


def test_dry_run_records_nothing(config: DeviceConfig, mint: Mint) -> None:
    token = mint()
    with Counter.open(config) as counter:
        assert counter.scan(token, record=False).reason is Reason.ACCEPTED
        assert counter.scan(token, record=False).reason is Reason.ACCEPTED
        assert counter.ledger.accepted_count() == 0 and counter.ledger.rejected_counts() == {}


def test_revocations_are_stored_and_honoured(config: DeviceConfig, mint: Mint) -> None:
    with Counter.open(config) as counter:
        counter.ledger.revoke(deals=["d-recalled"])
        assert counter.scan(mint(deal="d-recalled")).reason is Reason.REVOKED
        assert counter.scan(mint(deal="d-fine")).reason is Reason.ACCEPTED


def test_the_key_set_in_force_is_stored(config: DeviceConfig, keys: Keys) -> None:
    with Counter.open(config) as counter:
        stored = counter.ledger.keyset()
        assert isinstance(stored, KeySet) and stored.kids == ["k1"]
        assert not counter.ledger.store_keyset(KeySet.load(keys.jwks), time.time())  # unchanged


def answer(
    ledger: Ledger, keys: KeySet, server_time: float, *verdicts: BackendVerdict, through: int | None = None
) -> SyncRecord:
    """What a sync at ``server_time`` would bring: ``verdicts`` for the batch up to ``through``."""
    return SyncRecord(
        uploaded_through=ledger.last_seq if through is None else through,
        verdicts=verdicts,
        keys=keys,
        keys_issued_at=server_time,
        keys_valid_until=server_time + 7 * 86_400,
        revoked_vouchers=[],
        revoked_deals=[],
        revocations_watermark=None,
        peers={},
        server_time=server_time,
    )


def test_synced_rows_go_only_when_the_server_time_says_their_voucher_expired(
    config: DeviceConfig, mint: Mint
) -> None:
    with Counter.open(config) as counter:
        ledger, keys = counter.ledger, counter.keys
        counter.scan(mint(ttl=60))
        counter.scan("junk")
        assert ledger.unsynced_count() == 1  # rejections stay on the device: the sync carries redemptions
        [redemption] = ledger.to_upload(limit=10)
        now = time.time()
        ledger.apply_sync(answer(ledger, keys, now, through=0), 60)  # a sync that confirmed nothing
        assert ledger.unsynced_count() == 1 and ledger.accepted_count() == 1  # expired but not synced: kept
        ok = BackendVerdict(redemption.voucher_id, "ok")
        assert ledger.apply_sync(answer(ledger, keys, now, ok), 60) == 0  # still valid: kept
        assert ledger.unsynced_count() == 0 and ledger.to_upload(limit=10) == []
        assert ledger.redemptions()[0].backend_status == "ok"
        # an answer that moves the floor an hour on lets go of nothing the old floor kept...
        assert ledger.apply_sync(answer(ledger, keys, now + 3600), 60) == 0
        assert ledger.accepted_count() == 1
        # ...the next one, from the floor it set, does: expired by the server's time
        assert ledger.apply_sync(answer(ledger, keys, now + 3600), 60) == 1
        assert ledger.accepted_count() == 0
        # the floor never goes below the expiry of a redemption let go, whatever a later sync says
        ledger.apply_sync(answer(ledger, keys, now - 86_400), 60)
        assert ledger.time_floor is not None and ledger.time_floor >= redemption.expires_at + 60


def test_a_version_1_ledger_is_migrated_in_place_with_its_redemptions_numbered(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(SCHEMA)
        db.executemany(
            "INSERT INTO redemptions (voucher_id, nonce, device_id, redeemed_at, clock_at, deal, user,"
            " merchant, expires_at) VALUES (?, ?, 'c', ?, 0, 'd', 'u', 'm', 0)",
            [("v-late", "n1", 20.0), ("v-early", "n2", 10.0)],
        )
        db.execute(  # schema 1 and 2 kept the whole code of a rejection
            "INSERT INTO rejections (nonce, device_id, clock_at, result, voucher_id, raw)"
            " VALUES ('n3', 'c', 0, 'wrong_merchant', 'v-other', 'eyJ.a-whole.token')"
        )
        db.execute("PRAGMA user_version = 1")
        db.commit()
    with Ledger(path) as ledger:
        assert [(r.voucher_id, r.seq) for r in ledger.to_upload(limit=10)] == [("v-early", 1), ("v-late", 2)]
        assert ledger.last_seq == 2 and ledger.unsynced_count() == 2 and ledger.peers() == {}
        assert ledger.rejected_counts() == {"wrong_merchant": 1}  # counted before the migration
        assert [r.raw for r in ledger.rejections()] == [fingerprint("eyJ.a-whole.token")]


def test_the_ledger_file_is_plain_sqlite_with_a_unique_voucher_key(config: DeviceConfig, mint: Mint) -> None:
    with Counter.open(config) as counter:
        counter.scan(mint())
    db = sqlite3.connect(config.ledger_path)
    voucher_id = db.execute("SELECT voucher_id FROM redemptions").fetchone()[0]
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(
            "INSERT INTO redemptions (voucher_id, nonce, device_id, redeemed_at, clock_at, deal, user,"
            " merchant, expires_at, seq) VALUES (?, 'n', 'd', 0, 0, 'd', 'u', 'm', 0, 99)",
            (voucher_id,),
        )
    db.close()
