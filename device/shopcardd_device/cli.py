"""``shopcardd-device``: the counter's commands: run the scan loop, verify codes, show status, sync,
salvage a damaged ledger.

Everything (configuration, ledger, GPIO, camera) is built here in ``main``, never at import.
Exit codes: 0 done (every input accepted, for ``verify``), 1 a voucher was rejected (``sync``:
the backend could not be reached or refused), 2 usage, configuration or start-up error (a
damaged ledger too: the unit does not restart on 2; and ``verify`` when it could not record an
input, a full disk, so did not accept it). Ctrl-C ends ``verify`` after the current input with
the code of the verdicts so far (2 if none was judged), and ``run`` with 0; never with a
traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from shopcardd_commands.commandline import CommandParser, whole_number

from .answers import answer_line, scan_line, shorten
from .config import CONFIG_ENV, DEFAULT_CONFIG_PATH, DeviceConfig
from .errors import DeviceError, LedgerDamaged, LedgerFull
from .inputs import safe_code
from .log import setup_logging
from .runtime import open_counter
from .salvage import salvage, salvage_hint, salvage_lines
from .status import status_lines, status_report
from .verify import NotRecorded, StopAfterCurrent, judge_inputs

if TYPE_CHECKING:
    from .scanner import Scan

EXIT_OK: Final = 0
EXIT_REJECTED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_RECORDED: Final = EXIT_USAGE
"""verify has three exit codes (0, 1, 2): a ledger it cannot write (a full disk) is the device's set-up."""
TERMINAL_RETRIES: Final = 1
"""``sync`` from a terminal: tries again once, after a short pause, then says why it failed."""
NO_INPUT: Final = "no input to judge: stdin was empty (give tokens, image files, or - and one token a line)"

EXAMPLES = f"""\
examples:
  shopcardd-device run --config device.toml
  shopcardd-device verify --json "$(cat voucher.txt)" voucher.png
  shopcardd-provision issue ... | shopcardd-device verify --json -
  shopcardd-device status --json
  shopcardd-device sync --config device.toml
  shopcardd-device salvage --config device.toml   # after "ledger ... is damaged"

The configuration is --config PATH, else ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH}.
GPIO follows gpiozero's GPIOZERO_PIN_FACTORY (lgpio on a Pi; mock off it).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shopcardd-device",
        description="The ShopCardd counter device: scan a voucher's QR code, verify it offline, "
        "record it in the ledger, signal the verdict.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    config_help = f"device configuration (default ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH})"

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        """A subcommand; every one reads the same configuration."""
        parser = sub.add_parser(name, help=summary, description=description)
        parser.add_argument("--config", type=Path, metavar="PATH", help=config_help)
        return parser

    command(
        "run",
        "run the scan loop on the configured frame source",
        "Scan frames from [camera] source, verify each voucher offline, commit it to the ledger, then "
        "signal with the LEDs and buzzer. Prints one line per verdict; a code read again within [decoder] "
        "debounce_seconds is the same scan: one more line, marked (repeat, not recorded or signalled again), "
        "the first time. JSON log lines go to stderr. With "
        '[camera] source = "files" it reads the images of [camera] path in name order as consecutive '
        "frames and exits 0 after the last one. The shop LAN ([lan], on by default): after each "
        "redemption is committed and signalled, the merchant's other counters (from the last sync) are "
        "told, signed with device_key, and what they redeemed is refused here as already_redeemed; a "
        "counter that was off catches up when it is back.",
    )
    verify = command(
        "verify",
        "verify vouchers given as tokens, QR images or stdin lines",
        "Judge each INPUT as the counter would and record it in the ledger (unless --dry-run). Each "
        "answer is written and flushed as soon as it is decided, after its ledger commit. Exit 0 when "
        "every input was accepted, 1 when any was rejected, 2 on a usage or configuration error "
        "(also when - gave no input at all, and when an input could not be recorded: the disk is full, "
        "the ledger locked; it gets no answer, is not accepted, and verify stops there, saying why). "
        "Ctrl-C (SIGINT) stops after the current input, quietly: what was answered stays recorded, and "
        "the exit code is that of the inputs judged so far (0 or 1), or 2 if none was judged.",
    )
    verify.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per line: {"input", "result", "voucher_id", "deal", "merchant", "detail"} '
        "(detail: why, in words, or null)",
    )
    verify.add_argument(
        "--dry-run",
        action="store_true",
        help="judge only; write nothing: the ledger is only read (judged against an empty one if none "
        "exists yet), and no file or folder is made",
    )
    verify.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a voucher token, an image file holding a QR code, or - for one token per line on stdin",
    )
    status = command(
        "status",
        "show counts, unsynced rows, keys, the trusted time and the shop LAN",
        "Show what the ledger holds: redemptions, rejections by reason, rows not yet synced, the key "
        "set in force, the trusted time floor, a sync answer refused since the last good sync, and the "
        "shop LAN: peers seen, when last heard, records "
        "received and sent.",
    )
    status.add_argument("--json", action="store_true", help="one JSON object on one line instead of text")
    sync = command(
        "sync",
        "sync once with the backend: redemptions up; keys, revocations, peers, time down",
        "One sync with backend_url, then exit (a systemd timer runs it): redemptions not yet confirmed go up "
        "in batches of [sync] batch_size (at most 500), each request with a new token signed by device_key; "
        "the backend's verdict on each (ok, or conflict: another counter redeemed it first) is kept in the "
        "ledger. The key set is replaced (a running scan loop takes it up without a restart), revocations and"
        " the merchant's other counters stored, and the server's time sets the time floor. All of that is "
        "believed only from an answer signed by the backend's trust key (trust_key, pinned at enrolment, or a"
        " key it announced) that echoes this request's nonce; any other answer changes nothing, exits 1 and "
        "is shown by status. A failure that may pass (no network, a timeout, HTTP 5xx) is tried again: run by"
        " the timer (no terminal) 5 more times with a growing pause (1 to 16 s); run from a terminal once "
        "more after about a second, with a line for each failed try. What was confirmed stays, and the next "
        "run starts where the last confirmed batch ended. A batch refused as too large (HTTP 413, from the "
        "backend or a proxy before it) is sent again in halves, down to one redemption. A refusal (HTTP 4xx "
        "other than 401, or an answer the trust key does not vouch for) is kept in the ledger until a sync "
        "succeeds: status shows 'sync failing since ...'. Prints one summary line. Exit 0 synced, 1 the "
        "backend could not be reached or refused (the reason in one line), 2 a usage or configuration error "
        "(no backend_url, device_key or trust_key; a backend_url of plain http off loopback).",
    )
    sync.add_argument(
        "--retries",
        type=whole_number(0, 20),
        metavar="N",
        help="tries again at most N times while a failure may pass (default 5 without a terminal, "
        f"{TERMINAL_RETRIES} from one; 0: one try only)",
    )
    command(
        "salvage",
        "copy what a damaged ledger still holds into a fresh one, keeping the damaged file",
        "For a ledger that is damaged (every command refuses it, and the counter will not start): stop "
        "the counter first (systemctl stop shopcardd-verifier shopcardd-sync.timer). The damaged file "
        "is kept aside as ledger.sqlite3.damaged-TIME (with its -wal), never deleted; every row that can "
        "still be read (each redemption read stays refused as already_redeemed) is copied into a "
        "fresh ledger put in its place. A redemption whose row could not be read but whose voucher id an "
        "index still names is revoked in the fresh ledger, so it stays refused (as revoked). Prints what "
        "was copied and those voucher ids. A sound ledger is left as it is. Exit 0 done "
        "(or nothing to do), 2 no ledger, or a usage or configuration error.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace, DeviceConfig], int]] = {
        "run": run_loop,
        "verify": verify_inputs,
        "status": show_status,
        "sync": run_sync,
        "salvage": run_salvage,
    }
    try:
        config = DeviceConfig.load(args.config)
        return commands[args.command](args, config)
    except LedgerDamaged as exc:
        print(f"shopcardd-device {args.command}: {exc}\n{salvage_hint(args.config)}", file=sys.stderr)
        return EXIT_USAGE
    except DeviceError as exc:
        print(f"shopcardd-device {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C while starting up: nothing judged, no traceback
        return EXIT_USAGE


def run_loop(args: argparse.Namespace, config: DeviceConfig) -> int:
    setup_logging(config.log_level, config.device_id)

    def print_scan(scan: Scan) -> None:
        if (line := scan_line(scan)) is not None:
            print(line, flush=True)

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # systemd's stop ends the loop cleanly
    try:
        with open_counter(config, wait_for_space=True) as counter:
            counter.run(on_scan=print_scan)
    except KeyboardInterrupt:
        pass  # a scan cut short was rolled back and never signalled
    return EXIT_OK


def verify_inputs(args: argparse.Namespace, config: DeviceConfig) -> int:
    """Ctrl-C stops after the current input; the exit code is then that of the verdicts so far
    (0 all accepted, 1 any rejected), or 2 when nothing was judged."""
    stop = StopAfterCurrent()
    previous = signal.signal(signal.SIGINT, stop)
    try:
        return _verify(args, config, stop)
    except LedgerFull as exc:  # at start-up, before any input
        print(
            f"shopcardd-device verify: no input judged: not recorded, so not accepted: {exc}", file=sys.stderr
        )
        return EXIT_NOT_RECORDED
    finally:
        signal.signal(signal.SIGINT, previous)


def _verify(args: argparse.Namespace, config: DeviceConfig, stop: StopAfterCurrent) -> int:
    all_accepted, judged = True, 0
    with open_counter(config, dry_run=args.dry_run) as device:
        answers = judge_inputs(
            device.counter,
            args.inputs,
            stdin=sys.stdin,
            decoder=lambda: device.decoder,
            stop=stop,
            record=not args.dry_run,
        )
        try:
            for item, verdict in answers:
                judged += 1
                all_accepted &= verdict.is_accepted
                print(answer_line(item, verdict, as_json=args.json), flush=True)
        except NotRecorded as exc:
            shown = shorten(safe_code(exc.item))
            print(f"shopcardd-device verify: {shown} not recorded, so not accepted: {exc}", file=sys.stderr)
            return EXIT_NOT_RECORDED
    if not judged:
        if not stop.requested:  # an empty stdin: nothing judged is not "all accepted"
            print(f"shopcardd-device verify: {NO_INPUT}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK if all_accepted else EXIT_REJECTED


def show_status(args: argparse.Namespace, config: DeviceConfig) -> int:
    # Only reads, so it works on a read-only ledger; before the first scan or sync there is no
    # ledger, and none is made: the counts are those of an empty one.
    with open_counter(config, dry_run=True) as device:
        report = status_report(device.counter)
    if args.json:
        print(json.dumps(report, separators=(",", ":")), flush=True)  # one value per line
    else:
        print("\n".join(status_lines(report, config)), flush=True)
    return EXIT_OK


def run_sync(args: argparse.Namespace, config: DeviceConfig) -> int:
    """One sync; the reason of a failure in one line (exit 1). From a terminal it gives up after
    one short pause and says so at each try; the timer's run keeps its patient tries."""
    from .sync import TRIES, SyncFailed, load_device_key, summary

    setup_logging(config.log_level, config.device_id)
    load_device_key(config)  # a configuration error (exit 2) before anything is opened
    at_a_terminal = sys.stdin.isatty() or sys.stdout.isatty()
    retries = args.retries if args.retries is not None else TERMINAL_RETRIES if at_a_terminal else TRIES - 1

    def say_retry(attempt: int, tries: int, reason: str, pause: float) -> None:
        print(f"try {attempt} of {tries} failed: {reason}; trying again in {pause:.1f} s", file=sys.stderr)

    with open_counter(config) as device:
        try:
            report = device.sync(tries=retries + 1, on_retry=say_retry if at_a_terminal else None)
        except SyncFailed as exc:
            print(f"shopcardd-device sync: {exc}", file=sys.stderr)
            return EXIT_REJECTED
    print(summary(report, config), flush=True)
    return EXIT_OK


def run_salvage(args: argparse.Namespace, config: DeviceConfig) -> int:
    """Salvage a damaged ledger; say what was kept, copied and lost."""
    print("\n".join(salvage_lines(salvage(config.ledger_path), config.ledger_path)), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
