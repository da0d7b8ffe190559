"""``shopcardd-device`` as an operator and a script use it: the contracts of docs/architecture.md
and docs/device.md."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

import pytest

from logschema import log_entry
from shopcardd_device import cli
from shopcardd_device.config import DeviceConfig
from shopcardd_device.counter import Counter
from shopcardd_provision.qr import save_qr
from shopcardd_voucher import MAX_TOKEN_LENGTH

from .conftest import (
    BIN,
    MERCHANT,
    Keys,
    Mint,
    WriteConfig,
    device_command,
    device_in_process,
    read_only_folder,
    start_device,
    strict_json,
)


def answers(stdout: str) -> list[dict[str, object]]:
    return [strict_json(line) for line in stdout.splitlines()]


def print_of(code: bytes) -> str:
    """A code's fingerprint as an operator computes it: ``printf %s CODE | sha256sum | cut -c1-16``."""
    return "sha256:" + hashlib.sha256(code).hexdigest()[:16]


def rejected_raw(config: Path) -> list[tuple[str, str]]:
    """The rejections the ledger holds (reason, the code's fingerprint), as an operator would list
    them with sqlite3."""
    with closing(sqlite3.connect(config.parent / "data" / "ledger.sqlite3")) as db:
        return db.execute("SELECT result, raw FROM rejections ORDER BY id").fetchall()


# Under a UTF-8 locale Python's stdin is strict; under C or C.UTF-8 it keeps bad bytes. Both must work.
LOCALES = pytest.mark.parametrize("env", [{}, {"PYTHONIOENCODING": "utf-8:strict"}], ids=["c", "utf8"])


def test_verify_answers_one_json_line_per_input_and_exits_by_verdict(
    write_config: WriteConfig, mint: Mint, keys: Keys, tmp_path: Path
) -> None:
    config = write_config()
    token, forged = mint(deal="d-cake"), mint(key=keys.forger)
    save_qr(token, tmp_path / "voucher.png")
    result = device_command(
        "verify", "--config", config, "--json", token, str(tmp_path / "voucher.png"), forged
    )
    assert result.returncode == 1, result.stderr
    first, second, third = answers(result.stdout)
    assert set(first) == {"input", "result", "voucher_id", "deal", "merchant", "detail"}
    assert (first["input"], first["result"], first["deal"], first["merchant"]) == (
        token,
        "accepted",
        "d-cake",
        MERCHANT,
    )
    assert (second["result"], second["voucher_id"]) == ("already_redeemed", first["voucher_id"])
    assert (third["result"], third["voucher_id"]) == ("bad_signature", None)

    fresh = device_command("verify", "--config", config, "--json", mint())
    assert fresh.returncode == 0 and answers(fresh.stdout)[0]["result"] == "accepted"


def test_verify_dry_run_records_nothing_and_reads_readable_lines(
    write_config: WriteConfig, mint: Mint
) -> None:
    config, token = write_config(), mint()
    for _ in range(2):
        dry = device_in_process("verify", "--config", config, "--dry-run", token)
        assert dry.returncode == 0 and dry.stdout.startswith("accepted")
    status = json.loads(device_in_process("status", "--config", config, "--json").stdout)
    assert status["accepted"] == 0 and status["rejected"] == {}


def test_verify_dry_run_on_a_device_that_never_scanned_makes_no_ledger(
    write_config: WriteConfig, mint: Mint, tmp_path: Path
) -> None:
    config, token = write_config(), mint()
    for _ in range(2):  # judged against an empty ledger each time
        dry = device_in_process("verify", "--config", config, "--json", "--dry-run", token, "junk")
        assert dry.returncode == 1, dry.stderr
        assert [a["result"] for a in answers(dry.stdout)] == ["accepted", "bad_format"]
    assert not (tmp_path / "data").exists()  # no data_dir, no ledger file


def test_verify_dry_run_leaves_an_existing_ledger_as_it_was(
    write_config: WriteConfig, mint: Mint, tmp_path: Path
) -> None:
    config, redeemed = write_config(), mint()
    assert device_in_process("verify", "--config", config, redeemed).returncode == 0
    ledger = tmp_path / "data" / "ledger.sqlite3"
    files = sorted(p.name for p in ledger.parent.iterdir())
    before = ledger.read_bytes()
    with closing(sqlite3.connect(ledger)) as db:
        floor = db.execute("SELECT value FROM state WHERE name = 'time_floor'").fetchone()

    ahead = mint(now=time.time() + 30)  # recorded, its iat would raise the floor
    dry = device_in_process("verify", "--config", config, "--json", "--dry-run", redeemed, ahead, "junk")
    assert dry.returncode == 1, dry.stderr
    assert [a["result"] for a in answers(dry.stdout)] == ["already_redeemed", "accepted", "bad_format"]

    # Any reader of a WAL database may leave SQLite's -wal (empty) and -shm index: no ledger data.
    readers = {"ledger.sqlite3-wal", "ledger.sqlite3-shm"}
    assert sorted({p.name for p in ledger.parent.iterdir()} - readers) == files
    wal = ledger.with_name("ledger.sqlite3-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert ledger.read_bytes() == before
    with closing(sqlite3.connect(ledger)) as db:
        assert db.execute("SELECT value FROM state WHERE name = 'time_floor'").fetchone() == floor
        assert db.execute("SELECT count(*) FROM redemptions").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM rejections").fetchone() == (0,)


def test_verify_streams_stdin_answering_each_line_as_it_arrives(
    write_config: WriteConfig, mint: Mint
) -> None:
    proc = start_device("verify", "--config", write_config(), "--json", "-", stderr=None)
    assert proc.stdin and proc.stdout
    for expected in ("accepted", "bad_format"):
        proc.stdin.write((mint() if expected == "accepted" else "junk") + "\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["result"] == expected  # answered before stdin closed
    proc.stdin.close()
    assert proc.wait(30) == 1


@pytest.mark.parametrize(("first", "code"), [("accepted", 0), ("bad_format", 1)])
def test_ctrl_c_while_verify_reads_stdin_stops_quietly_with_the_verdicts_so_far(
    write_config: WriteConfig, mint: Mint, tmp_path: Path, first: str, code: int
) -> None:
    config = write_config()
    proc = start_device("verify", "--config", config, "--json", "-")
    assert proc.stdin and proc.stdout
    token = mint() if first == "accepted" else "junk"
    proc.stdin.write(token + "\n")
    proc.stdin.flush()
    answer = json.loads(proc.stdout.readline())  # judged: now it waits for the next line
    assert answer["result"] == first
    proc.send_signal(signal.SIGINT)  # Ctrl-C, stdin still open
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code
    assert out == "" and err == ""  # no traceback, nothing noisy
    with closing(sqlite3.connect(tmp_path / "data" / "ledger.sqlite3")) as db:  # what was answered is kept
        table = "redemptions" if first == "accepted" else "rejections"
        assert db.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)


class _Stdin(io.StringIO):
    """stdin whose reader presses Ctrl-C after the given lines (a terminal, as the shell sees it)."""

    def __init__(self, *lines: str) -> None:
        super().__init__("".join(f"{line}\n" for line in lines))

    def __next__(self) -> str:
        line = self.readline()
        if not line:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C while waiting for the next line
            raise StopIteration  # were SIGINT ignored, stdin would just end
        return line


def _main(*argv: str) -> int:
    """``shopcardd-device`` in this process; a Ctrl-C that escapes it fails the test (not the run)."""
    try:
        return cli.main(list(argv))
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped shopcardd-device as a KeyboardInterrupt (a traceback, exit -2)")


def test_ctrl_c_before_any_input_is_judged_exits_2(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", _Stdin())
    assert _main("verify", "--config", str(write_config()), "--json", "-") == 2
    assert capsys.readouterr().out == ""


def test_ctrl_c_while_judging_stops_after_that_input_and_commits_it(
    write_config: WriteConfig,
    mint: Mint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tokens = [mint(), mint(), mint()]
    scan = Counter.scan

    def interrupted_scan(self: Counter, code: str, *, record: bool = True) -> object:
        signal.raise_signal(signal.SIGINT)  # Ctrl-C in the middle of judging the first input
        return scan(self, code, record=record)

    monkeypatch.setattr(Counter, "scan", interrupted_scan)
    monkeypatch.setattr("sys.stdin", _Stdin(*tokens))
    assert _main("verify", "--config", str(write_config()), "--json", "-") == 0
    assert [a["result"] for a in answers(capsys.readouterr().out)] == ["accepted"]  # then it stopped
    with closing(sqlite3.connect(tmp_path / "data" / "ledger.sqlite3")) as db:
        assert db.execute("SELECT count(*) FROM redemptions").fetchone() == (1,)


def test_verify_usage_errors_exit_2(write_config: WriteConfig, tmp_path: Path) -> None:
    assert device_command("verify", "--config", write_config()).returncode == 2  # no INPUT
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("L", (64, 64), 255).save(blank)
    no_code = device_command("verify", "--config", write_config(), "--json", blank)
    assert no_code.returncode == 1 and answers(no_code.stdout)[0]["result"] == "bad_format"


def test_status_reports_counts_keys_and_time(write_config: WriteConfig, mint: Mint) -> None:
    config = write_config()
    device_in_process("verify", "--config", config, mint(), mint(merchant="m-else"), "junk", "junk2")
    status = json.loads(device_in_process("status", "--config", config, "--json").stdout)
    assert status["accepted"] == 1
    assert status["rejected"] == {"bad_format": 2, "wrong_merchant": 1}
    assert status["unsynced"] == 1  # redemptions wait for sync; rejections stay on the device
    assert status["keys"] == [
        {"kid": "k1", "alg": "EdDSA", "not_before": None, "expires": None, "valid_now": True}
    ]
    floor = status["time_floor"]  # RFC 3339 in UTC, as the backend's API gives times
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", floor), floor
    assert datetime.fromisoformat(floor).timestamp() > 1.7e9 and status["last_sync"] is None
    assert datetime.fromisoformat(status["trusted_time"]) >= datetime.fromisoformat(floor)
    readable = device_in_process("status", "--config", config)
    assert "accepted   1" in readable.stdout and "wrong_merchant 1" in readable.stdout


def test_status_json_is_one_object_on_one_line(write_config: WriteConfig, mint: Mint) -> None:
    config = write_config()
    device_in_process("verify", "--config", config, mint(), "junk")
    result = device_in_process("status", "--config", config, "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1  # a consumer reading one value per line gets the whole report
    report = strict_json(lines[0])
    assert (report["accepted"], report["rejected"]) == (1, {"bad_format": 1})
    readable = device_in_process("status", "--config", config).stdout.splitlines()
    assert len(readable) > 5 and readable[1].strip() == "accepted   1"  # the human form as it was


def test_run_reads_the_image_files_in_name_order_and_exits_0(
    write_config: WriteConfig, mint: Mint, keys: Keys, tmp_path: Path
) -> None:
    frames = tmp_path / "frames"
    token = mint()
    save_qr(token, frames / "01-voucher.png")
    save_qr(mint(key=keys.forger), frames / "02-forged.png")
    (frames / "03-broken.png").write_bytes(b"\x89PNG broken")
    save_qr(mint(merchant="m-else"), frames / "04-elsewhere.png")
    shutil.copy(frames / "01-voucher.png", frames / "05-voucher-again.png")  # still in view
    shutil.copy(frames / "01-voucher.png", frames / "06-voucher-again.png")
    config = write_config(f'[camera]\nsource = "files"\npath = "{frames}"\n[decoder]\ndebounce_seconds = 60')
    result = device_in_process("run", "--config", config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["accepted", "bad_signature", "wrong_merchant", "accepted"]
    assert "green light" in lines[0] and "red light" in lines[1]
    # the repeat says so once (and claims no light); the frames after it print nothing more
    assert lines[3].endswith("(repeat, not recorded or signalled again)") and "light" not in lines[3]
    assert lines[3].split("  (")[0] == lines[0].split("  ->")[0]  # the same verdict line
    log = [log_entry(line, "shopcardd-device") for line in result.stderr.splitlines()]
    assert {entry["message"] for entry in log} >= {"scan", "frame_failed", "source_ended"}
    assert {entry["device_id"] for entry in log} == {"counter-1"}
    [first] = [e for e in log if e["message"] == "scan" and e["result"] == "accepted"]
    assert (first["deal_id"], first["merchant_id"]) == ("d-espresso", MERCHANT)  # as the backend names ids
    assert [e["result"] for e in log if e["message"] == "scan"] == [
        "accepted",
        "bad_signature",
        "wrong_merchant",
    ]
    [ended] = [e for e in log if e["message"] == "source_ended"]
    assert (ended["frames_read"], ended["frames_unreadable"]) == (5, 1)  # 6 files, one broken
    with closing(sqlite3.connect(tmp_path / "data" / "ledger.sqlite3")) as db:
        assert db.execute("SELECT count(*) FROM redemptions").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM rejections").fetchone() == (2,)


def test_every_subcommand_explains_itself() -> None:
    for command in _subcommands():  # salvage too, and any command added later
        result = device_in_process(command, "--help")
        assert result.returncode == 0 and "--config" in result.stdout


def _subcommands() -> list[str]:
    """Every subcommand the parser knows, so a new one is checked too."""
    action = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_a_misspelt_option_is_refused_with_that_subcommands_usage(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main([command, "--jsn", "x"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: shopcardd-device {command} ")
    assert f"shopcardd-device {command}: error: unrecognized arguments: --jsn" in err


def test_run_off_the_pi_without_a_pin_factory_says_how_to_fix_it(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    config = write_config(f'[camera]\nsource = "files"\npath = "{tmp_path}"')
    result = subprocess.run(
        [str(BIN / "shopcardd-device"), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "GPIOZERO_PIN_FACTORY=mock" in result.stderr


def test_run_with_a_usb_scanner_scans_typed_lines_and_stops_cleanly_on_sigterm(
    write_config: WriteConfig, mint: Mint
) -> None:
    config = write_config('[camera]\nsource = "keyboard"')
    proc = start_device("run", "--config", config, stderr=subprocess.DEVNULL)
    assert proc.stdin and proc.stdout
    proc.stdin.write(mint() + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().startswith("accepted")
    proc.send_signal(signal.SIGTERM)  # systemctl stop, while the loop waits for the next line
    assert proc.wait(30) == 0
    proc.stdin.close()
    proc.stdout.close()


@LOCALES
def test_verify_judges_an_undecodable_stdin_line_and_goes_on_with_the_stream(
    write_config: WriteConfig, mint: Mint, env: dict[str, str]
) -> None:
    config, token = write_config(), mint()
    result = device_command(
        "verify", "--config", config, "--json", "-", stdin=b"bad\xff\n" + token.encode(), env=env
    )
    assert result.returncode == 1 and result.stderr == ""
    bad, good = answers(result.stdout)
    assert (bad["input"], bad["result"]) == ("bad\\xff", "bad_format")  # the byte shown, as stored
    assert (good["input"], good["result"]) == (token, "accepted")
    assert rejected_raw(config) == [("bad_format", print_of(b"bad\xff"))]


def test_verify_an_undecodable_argument_is_bad_format_in_text_json_and_dry_run(
    write_config: WriteConfig,
) -> None:
    config = write_config()
    text = device_command("verify", "--config", config, b"a\xffb")
    assert text.returncode == 1 and text.stdout.startswith("bad_format       a\\xffb ")
    dry = device_command("verify", "--config", config, "--json", "--dry-run", b"a\xffb", b"\x1b[2J")
    assert dry.returncode == 1
    assert [(a["input"], a["result"]) for a in answers(dry.stdout)] == [
        ("a\\xffb", "bad_format"),
        ("\\x1b[2J", "bad_format"),  # a terminal escape is shown, never obeyed
    ]
    assert rejected_raw(config) == [("bad_format", print_of(b"a\xffb"))]


def test_verify_cuts_a_huge_input_line_and_the_ledger_keeps_its_fingerprint(
    write_config: WriteConfig,
) -> None:
    config = write_config()
    result = device_in_process("verify", "--config", config, "--json", "-", stdin="A" * 5_000_000 + "\n")
    [answer] = answers(result.stdout)
    assert len(result.stdout) < 5000 and answer["result"] == "bad_format"
    assert answer["input"] == "A" * MAX_TOKEN_LENGTH + "...[cut: 5000000 characters]"
    assert rejected_raw(config) == [("bad_format", print_of(b"A" * 5_000_000))]
    text = device_in_process("verify", "--config", config, "--dry-run", "-", stdin="B" * 5_000_000 + "\n")
    assert len(text.stdout) < 200 and text.stdout.startswith("bad_format       BBBB")


def test_verify_a_missing_image_file_says_so_and_records_nothing(write_config: WriteConfig) -> None:
    config = write_config()
    text = device_in_process("verify", "--config", config, "missing.png")
    assert text.returncode == 1 and "no such file: missing.png" in text.stdout
    assert "compact JWS" not in text.stdout
    as_json = device_in_process("verify", "--config", config, "--json", "shots/voucher.jpg")
    assert answers(as_json.stdout) == [
        {
            "input": "shots/voucher.jpg",
            "result": "bad_format",
            "voucher_id": None,
            "deal": None,
            "merchant": None,
            "detail": "no such file: shots/voucher.jpg",
        }
    ]
    assert as_json.stderr == ""  # the reason is in the answer, for the program that reads it
    assert rejected_raw(config) == []  # nothing was scanned
    url = device_in_process("verify", "--config", config, "--dry-run", "https://example.com/menu")
    assert "not a compact JWS" in url.stdout  # a URL is a code (another QR code), not a path


@LOCALES
def test_run_with_a_usb_scanner_rejects_a_garbled_line_with_a_verdict_and_a_ledger_row(
    write_config: WriteConfig, mint: Mint, env: dict[str, str]
) -> None:
    config = write_config('[camera]\nsource = "keyboard"')
    token = mint()
    result = device_command("run", "--config", config, stdin=b"bad\xff\n" + token.encode() + b"\n", env=env)
    assert result.returncode == 0, result.stderr
    garbled, good = result.stdout.splitlines()
    assert garbled.startswith("bad_format") and "red light" in garbled
    assert garbled.endswith("-> red light, one long beep  (not ASCII)"), "why, in words"
    assert good.startswith("accepted")
    log = [strict_json(line) for line in result.stderr.splitlines()]
    assert [entry["result"] for entry in log if entry["message"] == "scan"] == ["bad_format", "accepted"]
    assert not [entry for entry in log if entry["message"].endswith("_failed")]
    assert rejected_raw(config) == [("bad_format", print_of(b"bad\xff"))]


def test_run_logs_a_file_name_that_is_not_utf8_as_valid_json(
    write_config: WriteConfig, mint: Mint, tmp_path: Path
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / os.fsdecode(b"01-caf\xe9.png")).write_bytes(b"\x89PNG broken")  # a Latin-1 file name
    save_qr(mint(), frames / "02-voucher.png")
    result = device_command("run", "--config", write_config(f'[camera]\nsource = "files"\npath = "{frames}"'))
    assert result.returncode == 0 and result.stdout.startswith("accepted")
    [failed] = [e for e in map(strict_json, result.stderr.splitlines()) if e["message"] == "frame_failed"]
    assert "01-caf\\xe9.png" in failed["error"]


def test_a_read_only_ledger_folder_is_not_called_damaged_and_status_still_reads_it(
    write_config: WriteConfig, mint: Mint
) -> None:
    config = write_config()
    assert device_in_process("verify", "--config", config, mint()).returncode == 0
    with read_only_folder(config.parent / "data"):
        refused = device_in_process("verify", "--config", config, mint())
        status = device_in_process("status", "--config", config, "--json")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "cannot open or write the ledger" in refused.stderr and "read-only" in refused.stderr
    assert "damaged" not in refused.stderr
    assert status.returncode == 0, status.stderr
    assert strict_json(status.stdout)["accepted"] == 1


@pytest.mark.parametrize("side", [10_000, 14_000])  # past Pillow's warning limit; past its error limit
def test_verify_refuses_an_image_too_large_for_any_camera_with_a_verdict(
    write_config: WriteConfig, tmp_path: Path, side: int
) -> None:
    from PIL import Image

    huge = tmp_path / "huge.png"
    Image.new("1", (side, side), 1).save(huge)  # a few kB on disk, hundreds of megapixels decoded
    result = device_command("verify", "--config", write_config(), "--json", huge)
    assert result.returncode == 1, result.stderr
    [answer] = answers(result.stdout)
    assert answer["result"] == "bad_format" and "cannot read image" in str(answer["detail"])
    assert result.stderr == ""


def test_verify_json_says_why_each_input_was_refused(
    write_config: WriteConfig, mint: Mint, tmp_path: Path
) -> None:
    """A missing file, a blank image and garbage are all bad_format; the detail tells them apart."""
    from PIL import Image

    Image.new("L", (64, 64), 255).save(tmp_path / "blank.png")
    token = mint()
    inputs = ["gone.png", str(tmp_path / "blank.png"), "garbage", token]
    result = device_in_process("verify", "--config", write_config(), "--json", *inputs)
    assert result.returncode == 1, result.stderr
    missing, blank, garbage, good = answers(result.stdout)
    assert missing["detail"] == "no such file: gone.png"
    assert blank["detail"] == f"no QR code found in {tmp_path / 'blank.png'}"
    assert garbage["detail"] == "not a compact JWS (three dot-separated parts)"
    assert {missing["result"], blank["result"], garbage["result"]} == {"bad_format"}
    assert good["result"] == "accepted" and good["detail"] is None


def test_verify_with_nothing_on_stdin_is_a_usage_error_not_all_accepted(write_config: WriteConfig) -> None:
    for stdin in ("", "\n  \n"):
        result = device_in_process("verify", "--config", write_config(), "-", stdin=stdin)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr == f"shopcardd-device verify: {cli.NO_INPUT}\n"


def test_verdict_details_give_times_in_the_shops_time_zone_as_a_person_reads_them(
    write_config: WriteConfig, mint: Mint
) -> None:
    """Not epoch seconds: the cashier and the operator read the shop's local time."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    config = write_config(top='timezone = "America/New_York"')
    now = time.time()
    old = mint(now=now - 7200, ttl=3600)  # expired an hour ago
    expired_at = datetime.fromtimestamp(int(now - 3600), ZoneInfo("America/New_York"))
    token = mint()
    assert device_in_process("verify", "--config", config, token).returncode == 0
    result = device_in_process("verify", "--config", config, "--json", old, token)
    expired, again = answers(result.stdout)
    assert expired["result"] == "expired"
    assert expired["detail"] == f"expired at {expired_at:%Y-%m-%d %H:%M:%S} {expired_at.tzname()}"
    assert again["result"] == "already_redeemed"
    when = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d E[SD]T"  # New York's abbreviation, not epoch seconds
    assert re.fullmatch(f"redeemed at this device {when}", str(again["detail"]))


def test_an_unknown_time_zone_is_refused_at_start_up_in_one_line(write_config: WriteConfig) -> None:
    result = device_in_process("status", "--config", write_config(top='timezone = "Europe/Berln"'))
    assert result.returncode == 2
    assert result.stderr.startswith("shopcardd-device status: timezone: unknown time zone 'Europe/Berln'")
    assert result.stderr.count("\n") == 1


def test_a_ledger_is_one_device_s_and_another_device_is_refused_it(
    write_config: WriteConfig, mint: Mint
) -> None:
    """Two bundles pointing at one data_dir: till-2 must not say "redeemed here" of till-1's scan."""
    first = write_config()
    second = first.with_name("device-2.toml")
    second.write_text(first.read_text().replace('device_id = "counter-1"', 'device_id = "counter-2"'))
    token = mint()
    assert device_command("verify", "--config", first, token).returncode == 0
    for command in (["verify", token], ["status"]):
        refused = device_command(command[0], "--config", second, *command[1:])
        assert refused.returncode == 2, (command, refused.stdout)
        (line,) = refused.stderr.splitlines()
        assert "is device 'counter-1''s, not 'counter-2''s" in line and "data_dir of its own" in line
    assert device_command("verify", "--config", first, token).stdout.startswith("already_redeemed")


def test_status_before_the_first_scan_makes_no_ledger(write_config: WriteConfig) -> None:
    config = write_config()
    shown = device_command("status", "--config", config)
    assert shown.returncode == 0, shown.stderr
    assert "(ledger none yet at " in shown.stdout.splitlines()[0]
    report = strict_json(device_command("status", "--config", config, "--json").stdout)
    assert (report["ledger_exists"], report["accepted"], report["unsynced"]) == (False, 0, 0)
    assert not (config.parent / "data").exists(), "status only reads: no folder, no ledger"


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_the_ledger_files_are_the_counter_user_s_only_under_any_umask(
    write_config: WriteConfig, mint: Mint, umask: int
) -> None:
    config = DeviceConfig.load(write_config())
    old = os.umask(umask)
    try:
        with Counter.open(config) as counter:
            counter.scan(mint())
            files = [config.ledger_path.with_name(config.ledger_path.name + s) for s in ("", "-wal", "-shm")]
            assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {
                f.name: "0o600" for f in files
            }
    finally:
        os.umask(old)
    for file in files:
        if file.exists():
            file.chmod(0o644)  # a ledger made before this rule
    Counter.open(config).close()
    assert oct(stat.S_IMODE(config.ledger_path.stat().st_mode)) == "0o600"
