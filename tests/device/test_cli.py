"""``shopcardd-device`` as an operator and a script use it: the contracts of DESIGN.md."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from shopcardd_provision.qr import save_qr
from shopcardd_voucher import MAX_TOKEN_LENGTH

from .conftest import BIN, MERCHANT, Keys, Mint, WriteConfig, device_command, read_only_folder, strict_json


def answers(stdout: str) -> list[dict[str, object]]:
    return [strict_json(line) for line in stdout.splitlines()]


def rejected_raw(config: Path) -> list[tuple[str, str]]:
    """The rejections the ledger holds, as an operator would list them with sqlite3."""
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
    assert set(first) == {"input", "result", "voucher_id", "deal", "merchant"}
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
        dry = device_command("verify", "--config", config, "--dry-run", token)
        assert dry.returncode == 0 and dry.stdout.startswith("accepted")
    status = json.loads(device_command("status", "--config", config, "--json").stdout)
    assert status["accepted"] == 0 and status["rejected"] == {}


def test_verify_streams_stdin_answering_each_line_as_it_arrives(
    write_config: WriteConfig, mint: Mint
) -> None:
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    proc = subprocess.Popen(
        [str(BIN / "shopcardd-device"), "verify", "--config", str(write_config()), "--json", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin and proc.stdout
    for expected in ("accepted", "bad_format"):
        proc.stdin.write((mint() if expected == "accepted" else "junk") + "\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["result"] == expected  # answered before stdin closed
    proc.stdin.close()
    assert proc.wait(30) == 1


def test_verify_usage_errors_exit_2(write_config: WriteConfig, tmp_path: Path) -> None:
    assert device_command("verify", "--config", write_config()).returncode == 2  # no INPUT
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("L", (64, 64), 255).save(blank)
    no_code = device_command("verify", "--config", write_config(), "--json", blank)
    assert no_code.returncode == 1 and answers(no_code.stdout)[0]["result"] == "bad_format"


def test_status_reports_counts_keys_and_time(write_config: WriteConfig, mint: Mint) -> None:
    config = write_config()
    device_command("verify", "--config", config, mint(), mint(merchant="m-else"), "junk", "junk2")
    status = json.loads(device_command("status", "--config", config, "--json").stdout)
    assert status["accepted"] == 1
    assert status["rejected"] == {"bad_format": 2, "wrong_merchant": 1}
    assert status["unsynced"] == 4
    assert status["keys"] == [
        {"kid": "k1", "alg": "EdDSA", "not_before": None, "expires": None, "valid_now": True}
    ]
    assert status["time_floor"] > 1.7e9 and status["last_sync"] is None
    readable = device_command("status", "--config", config)
    assert "accepted   1" in readable.stdout and "wrong_merchant 1" in readable.stdout


def test_run_reads_the_image_files_in_name_order_and_exits_0(
    write_config: WriteConfig, mint: Mint, keys: Keys, tmp_path: Path
) -> None:
    frames = tmp_path / "frames"
    token = mint()
    save_qr(token, frames / "01-voucher.png")
    save_qr(mint(key=keys.forger), frames / "02-forged.png")
    (frames / "03-broken.png").write_bytes(b"\x89PNG broken")
    save_qr(mint(merchant="m-else"), frames / "04-elsewhere.png")
    config = write_config(f'[camera]\nsource = "files"\npath = "{frames}"')
    result = device_command("run", "--config", config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["accepted", "bad_signature", "wrong_merchant"]
    assert "green light" in lines[0] and "red light" in lines[1]
    log = [json.loads(line) for line in result.stderr.splitlines()]
    assert {entry["event"] for entry in log} >= {"scan", "frame_failed", "source_ended"}


def test_sync_is_not_built_yet() -> None:
    result = device_command("sync")
    assert result.returncode == 2 and "not yet built (issue: device enrolment and sync)" in result.stderr


def test_every_subcommand_explains_itself() -> None:
    for command in ("run", "verify", "status", "sync"):
        result = device_command(command, "--help")
        assert result.returncode == 0 and "--config" in result.stdout


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
    proc = subprocess.Popen(
        [str(BIN / "shopcardd-device"), "run", "--config", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
    )
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
    assert rejected_raw(config) == [("bad_format", "bad\\xff")]


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
    assert rejected_raw(config) == [("bad_format", "a\\xffb")]


def test_verify_cuts_a_huge_input_line_as_the_ledger_stores_it(write_config: WriteConfig) -> None:
    config = write_config()
    result = device_command("verify", "--config", config, "--json", "-", stdin="A" * 5_000_000 + "\n")
    [answer] = answers(result.stdout)
    assert len(result.stdout) < 5000 and answer["result"] == "bad_format"
    assert answer["input"] == "A" * MAX_TOKEN_LENGTH + "...[cut: 5000000 characters]"
    assert rejected_raw(config) == [("bad_format", answer["input"])]
    text = device_command("verify", "--config", config, "--dry-run", "-", stdin="B" * 5_000_000 + "\n")
    assert len(text.stdout) < 200 and text.stdout.startswith("bad_format       BBBB")


def test_verify_a_missing_image_file_says_so_and_records_nothing(write_config: WriteConfig) -> None:
    config = write_config()
    text = device_command("verify", "--config", config, "missing.png")
    assert text.returncode == 1 and "no such file: missing.png" in text.stdout
    assert "compact JWS" not in text.stdout
    as_json = device_command("verify", "--config", config, "--json", "shots/voucher.jpg")
    assert answers(as_json.stdout) == [
        {
            "input": "shots/voucher.jpg",
            "result": "bad_format",
            "voucher_id": None,
            "deal": None,
            "merchant": None,
        }
    ]
    assert as_json.stderr == "shopcardd-device verify: no such file: shots/voucher.jpg\n"
    assert rejected_raw(config) == []  # nothing was scanned
    url = device_command("verify", "--config", config, "--dry-run", "https://example.com/menu")
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
    assert good.startswith("accepted")
    log = [strict_json(line) for line in result.stderr.splitlines()]
    assert [entry["result"] for entry in log if entry["event"] == "scan"] == ["bad_format", "accepted"]
    assert not [entry for entry in log if entry["event"].endswith("_failed")]
    assert rejected_raw(config) == [("bad_format", "bad\\xff")]


def test_run_logs_a_file_name_that_is_not_utf8_as_valid_json(
    write_config: WriteConfig, mint: Mint, tmp_path: Path
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / os.fsdecode(b"01-caf\xe9.png")).write_bytes(b"\x89PNG broken")  # a Latin-1 file name
    save_qr(mint(), frames / "02-voucher.png")
    result = device_command("run", "--config", write_config(f'[camera]\nsource = "files"\npath = "{frames}"'))
    assert result.returncode == 0 and result.stdout.startswith("accepted")
    [failed] = [e for e in map(strict_json, result.stderr.splitlines()) if e["event"] == "frame_failed"]
    assert "01-caf\\xe9.png" in failed["error"]


def test_a_read_only_ledger_folder_is_not_called_damaged_and_status_still_reads_it(
    write_config: WriteConfig, mint: Mint
) -> None:
    config = write_config()
    assert device_command("verify", "--config", config, mint()).returncode == 0
    with read_only_folder(config.parent / "data"):
        refused = device_command("verify", "--config", config, mint())
        status = device_command("status", "--config", config, "--json")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "cannot open or write the ledger" in refused.stderr and "read-only" in refused.stderr
    assert "damaged" not in refused.stderr
    assert status.returncode == 0, status.stderr
    assert strict_json(status.stdout)["accepted"] == 1
