"""Salvage a damaged ledger: keep the damaged file aside, never deleting it, and copy every row
that can still be read into a fresh ledger put in its place; a redemption whose row is lost but
whose voucher id an index still names is revoked there, so no voucher known to be redeemed here
becomes acceptable again.

A ledger damaged on its SD card stops the counter: judging against a ledger that may have
forgotten redemptions would accept vouchers twice. What can still be read must survive, since
each redemption read is a voucher that stays refused as ``already_redeemed``. SQLite's
``.recover`` lives in the ``sqlite3`` shell, which a counter need not have; this uses Python's
sqlite3 alone: each table is read in key order from the front up to the damage and from the
back up to it, then each redemption that an index still names is looked up one by one.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shopcardd_commands.commandline import counted

from .errors import LedgerDamaged, LedgerError
from .inputs import safe_code
from .ledger import Ledger

_SIDE_FILES: Final = ("-wal", "-shm")
_MAGIC: Final = b"SQLite format 3\x00"


@dataclass(frozen=True, slots=True)
class Salvaged:
    """What one salvage did."""

    kept_at: Path
    """The damaged ledger, renamed aside (its ``-wal`` beside it, if it had one)."""
    copied: dict[str, int]
    """Rows copied into the fresh ledger, by table."""
    lost_redemptions: tuple[str, ...]
    """Voucher ids an index still names whose redemption rows could not be read: revoked in the
    fresh ledger, so that they stay refused (as ``revoked``)."""


def salvage(path: Path) -> Salvaged | None:
    """Salvage the ledger at ``path``; ``None`` when it is sound (then nothing is touched)."""
    if not path.is_file():
        raise LedgerError(f"no ledger at {path}: nothing to salvage")
    try:
        Ledger(path).close()
        return None
    except LedgerDamaged:
        pass
    with tempfile.TemporaryDirectory(prefix=".salvage-", dir=path.parent) as work:
        damaged, fresh = Path(work) / "damaged.sqlite3", Path(work) / "fresh.sqlite3"
        for suffix in ("", "-wal"):  # read a copy: the file kept aside stays exactly as it was found
            if _with_suffix(path, suffix).exists():
                shutil.copyfile(_with_suffix(path, suffix), _with_suffix(damaged, suffix))
        _restore_magic(damaged)
        Ledger(fresh, check=False).close()  # the current schema, empty
        with (
            closing(sqlite3.connect(damaged)) as src,
            closing(sqlite3.connect(fresh, isolation_level=None)) as dst,
        ):
            copied, lost = _copy(src, dst)
            if dst.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise LedgerError(f"the fresh ledger made from {path} failed its integrity check")
        if not any(copied.values()) and not lost:
            raise LedgerError(
                f"nothing could be read from the damaged ledger {path}; it is left as it was. Do not "
                "start the counter on a new, empty ledger: it would accept again every voucher "
                "redeemed here. Keep the file (and any -wal beside it) for support."
            )
        kept_at = _set_aside(path)
        os.replace(fresh, path)
        _sync_folder(path.parent)
    return Salvaged(kept_at, copied, lost)


def salvage_hint(config: Path | None) -> str:
    """How to recover from a damaged ledger, in words an operator can paste."""
    option = f" --config {config}" if config else ""
    return (
        "The counter will not run on a damaged ledger. Stop it (systemctl stop shopcardd-verifier "
        f"shopcardd-sync.timer), then run: shopcardd-device salvage{option}  (it keeps the damaged file "
        "aside and copies every readable redemption into a fresh ledger; see docs/device.md, "
        '"A damaged ledger")'
    )


def salvage_lines(done: Salvaged | None, path: Path) -> list[str]:
    """What ``salvage`` prints: what was kept, copied and lost, and what to do next."""
    if done is None:
        return [
            f"ledger {safe_code(str(path))} passes its integrity check: nothing to salvage, nothing changed"
        ]
    copied = ", ".join(f"{counted(n, 'row')} of {table}" for table, n in sorted(done.copied.items()) if n)
    lines = [
        f"kept the damaged ledger as {safe_code(str(done.kept_at))} (never deleted)",
        f"copied into a fresh ledger at {safe_code(str(path))}: {copied or 'nothing (no row could be read)'}",
    ]
    if done.lost_redemptions:
        lines.append(
            f"{counted(len(done.lost_redemptions), 'redemption')} named by an index could not be read: "
            f"revoked here, so they stay refused (as revoked): {' '.join(done.lost_redemptions)}"
        )
    lines.append("start the counter again (systemctl start shopcardd-verifier shopcardd-sync.timer)")
    return lines


def _restore_magic(path: Path) -> None:
    """Put back the 16 bytes every SQLite file starts with, if they were overwritten: with them
    gone SQLite reads nothing ("file is not a database") though every page may still be sound."""
    with path.open("r+b") as file:
        if file.read(len(_MAGIC)) != _MAGIC:
            file.seek(0)
            file.write(_MAGIC)


def _with_suffix(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _copy(src: sqlite3.Connection, dst: sqlite3.Connection) -> tuple[dict[str, int], tuple[str, ...]]:
    """Every readable row of every table both ledgers have, in one transaction; then the counters
    that must not go back (the redemption number, the time floor, the counts by reason)."""
    copied: dict[str, int] = {}
    dst.execute("BEGIN IMMEDIATE")
    for table, columns, key in _tables(dst):
        readable = [c for c in columns if c in _columns(src, table)]
        if readable:
            insert = _insert(table, readable)
            copied[table] = sum(
                dst.execute(insert, row).rowcount for row in _readable_rows(src, table, readable, key)
            )
    lost = _copy_redemptions_named_by_index(src, dst)
    dst.executemany(  # their ids are all that is left of them: enough to keep them refused
        "INSERT OR IGNORE INTO revocations (kind, value) VALUES ('voucher', ?)", [(v,) for v in lost]
    )
    copied["redemptions"] = dst.execute("SELECT count(*) FROM redemptions").fetchone()[0]
    _number_unnumbered(dst)
    _at_least(dst, "redemption_seq", dst.execute("SELECT max(seq) FROM redemptions").fetchone()[0])
    _at_least(dst, "time_floor", dst.execute("SELECT max(redeemed_at) FROM redemptions").fetchone()[0])
    dst.execute(
        "INSERT INTO rejection_counts (result, count) SELECT result, count(*) FROM rejections WHERE true"
        " GROUP BY result ON CONFLICT (result) DO UPDATE SET count = max(count, excluded.count)"
    )
    dst.execute("COMMIT")
    dst.execute("PRAGMA journal_mode = DELETE")  # all in the one file that is moved into place
    return copied, lost


def _insert(table: str, columns: list[str]) -> str:
    return f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def _tables(db: sqlite3.Connection) -> Iterator[tuple[str, list[str], list[str]]]:
    """Each table of the fresh ledger with its columns and its key columns (the storage order)."""
    names = [
        row[0]
        for row in db.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    for name in names:
        info = db.execute(f'PRAGMA table_info("{name}")').fetchall()
        key = [row[1] for row in sorted(info, key=lambda row: row[5]) if row[5]]
        yield name, [row[1] for row in info], key or ["rowid"]


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    """The columns ``table`` has in the damaged ledger (none when its schema cannot be read)."""
    try:
        return {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}
    except sqlite3.DatabaseError:
        return set()


def _readable_rows(db: sqlite3.Connection, table: str, columns: list[str], key: list[str]) -> Iterator[Any]:
    """The rows of ``table`` in key order from the front up to the first damaged page, then from
    the back up to it (a table read to its end needs no second pass)."""
    for direction in ("ASC", "DESC"):
        order = ", ".join(f"{column} {direction}" for column in key)
        try:
            yield from db.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")
            return
        except sqlite3.DatabaseError:
            continue


def _copy_redemptions_named_by_index(src: sqlite3.Connection, dst: sqlite3.Connection) -> tuple[str, ...]:
    """Look up, one by one, each redemption the ``seq`` index names that the table scans did not
    reach (an index lives on pages of its own, so it may name rows beyond the damage); return the
    voucher ids whose rows could not be read."""
    named = {
        row[0]
        for row in _readable_rows(src, "redemptions INDEXED BY redemptions_seq", ["voucher_id"], ["seq"])
    }
    have = {row[0] for row in dst.execute("SELECT voucher_id FROM redemptions")}
    columns = [
        row[1]
        for row in dst.execute("PRAGMA table_info(redemptions)")
        if row[1] in _columns(src, "redemptions")
    ]
    select = f"SELECT {', '.join(columns)} FROM redemptions WHERE voucher_id = ?"
    lost = []
    for voucher_id in sorted(named - have):
        try:
            row = src.execute(select, (voucher_id,)).fetchone()
        except sqlite3.DatabaseError:
            row = None
        if row is None:
            lost.append(voucher_id)
        else:
            dst.execute(_insert("redemptions", columns), row)
    return tuple(lost)


def _number_unnumbered(db: sqlite3.Connection) -> None:
    """Redemptions from a ledger older than ``seq`` get numbers after the last one, so sync uploads them."""
    top = db.execute("SELECT coalesce(max(seq), 0) FROM redemptions").fetchone()[0]
    rows = db.execute("SELECT voucher_id FROM redemptions WHERE seq IS NULL ORDER BY redeemed_at, voucher_id")
    db.executemany(
        "UPDATE redemptions SET seq = ? WHERE voucher_id = ?",
        [(top + n, voucher_id) for n, (voucher_id,) in enumerate(rows.fetchall(), start=1)],
    )


def _at_least(db: sqlite3.Connection, name: str, value: float | None) -> None:
    """Raise the state value ``name`` to ``value``, never lower it."""
    if value is None:
        return
    db.execute(
        "INSERT INTO state (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
        " SET value = excluded.value WHERE CAST(excluded.value AS REAL) > CAST(state.value AS REAL)",
        (name, repr(value)),
    )


def _set_aside(path: Path) -> Path:
    """Keep the damaged ledger (and its ``-wal``) under a new name, never deleting a byte: a hard
    link, so the data stays where it was; its side files leave ``path``, so the fresh ledger put
    there does not take up the damaged one's write-ahead log."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept_at = _with_suffix(path, f".damaged-{stamp}")
    n = 1
    while any(_with_suffix(kept_at, suffix).exists() for suffix in ("", *_SIDE_FILES)):
        n += 1
        kept_at = _with_suffix(path, f".damaged-{stamp}-{n}")
    for suffix in ("", *_SIDE_FILES):
        source = _with_suffix(path, suffix)
        if not source.exists():
            continue
        try:
            os.link(source, _with_suffix(kept_at, suffix))
        except OSError:  # a filesystem without hard links
            shutil.copy2(source, _with_suffix(kept_at, suffix))
        if suffix:
            source.unlink()  # the data stays under the new name
    return kept_at


def _sync_folder(folder: Path) -> None:
    """Make the renames durable (a power cut right after must not bring the damaged file back)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
