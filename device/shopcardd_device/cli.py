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
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from shopcardd_voucher import Reason, readable_time
from shopcardd_voucher.commandline import CommandParser

from . import policy
from .closing import Closing
from .config import CONFIG_ENV, DEFAULT_CONFIG_PATH, DeviceConfig
from .counter import Counter
from .errors import DecoderError, DeviceError, FrameError, LedgerDamaged, LedgerError, LedgerFull
from .inputs import keep_undecodable, names_a_file, safe_code
from .ledger import SyncFailure
from .log import event, get_logger, setup_logging

if TYPE_CHECKING:
    from .decoders.base import Decoder

EXIT_OK: Final = 0
EXIT_REJECTED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_RECORDED: Final = EXIT_USAGE
"""verify has three exit codes (0, 1, 2): a ledger it cannot write (a full disk) is the device's set-up."""
SIGNAL_DRAIN_SECONDS: Final = 15.0
SPACE_WAIT_SECONDS: Final = (1.0, 30.0)
"""``run`` on a disk too full to open the ledger: the first pause before trying again, the longest."""
REPEAT_NOTE: Final = "(repeat, not recorded or signalled again)"
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
    command(
        "sync",
        "sync once with the backend: redemptions up; keys, revocations, peers, time down",
        "One sync with backend_url, then exit (a systemd timer runs it): redemptions not yet confirmed "
        "go up in batches of [sync] batch_size (at most 500), each request with a new token signed by "
        "device_key; the backend's verdict on each (ok, or conflict: another counter redeemed it first) "
        "is kept in the ledger. The key set is replaced (a running scan loop takes it up without a "
        "restart), revocations and the merchant's other counters stored, and the server's time sets the "
        "time floor. All of that is believed only from an answer signed by the backend's trust key "
        "(trust_key, pinned at enrolment, or a key it announced) that echoes this request's nonce; "
        "any other answer changes nothing, exits 1 and is shown by status. A failure that may pass "
        "(no network, a timeout, HTTP 5xx) is tried again with a "
        "growing pause; what was confirmed stays, and the next run starts where the last confirmed batch "
        "ended. A batch refused as too large (HTTP 413, from the backend or a proxy before it) is sent "
        "again in halves, down to one redemption. A refusal (HTTP 4xx other than 401, or an answer the "
        "trust key does not vouch for) is kept in the ledger until a sync succeeds: status shows 'sync "
        "failing since ...'. Prints one summary line. Exit 0 synced, 1 the backend could not be reached "
        "or refused (the reason in one line), 2 a usage or configuration error (no backend_url, "
        "device_key or trust_key; a backend_url of plain http off loopback).",
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
        print(f"shopcardd-device {args.command}: {exc}\n{_salvage_hint(args)}", file=sys.stderr)
        return EXIT_USAGE
    except DeviceError as exc:
        print(f"shopcardd-device {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C while starting up: nothing judged, no traceback
        return EXIT_USAGE


def _salvage_hint(args: argparse.Namespace) -> str:
    """How to recover from a damaged ledger, in words an operator can paste."""
    config = f" --config {args.config}" if args.config else ""
    return (
        "The counter will not run on a damaged ledger. Stop it (systemctl stop shopcardd-verifier "
        f"shopcardd-sync.timer), then run: shopcardd-device salvage{config}  (it keeps the damaged file "
        "aside and copies every readable redemption into a fresh ledger; see docs/device.md, "
        '"A damaged ledger")'
    )


def _open_decoder(config: DeviceConfig) -> Decoder:
    from .decoders import open_decoder  # numpy and the vendor library only when frames are decoded

    return open_decoder(config.decoder.name, try_invert=config.decoder.try_invert)


# -- run ------------------------------------------------------------------------------------


def run_loop(args: argparse.Namespace, config: DeviceConfig) -> int:
    from .feedback import FeedbackPanel, describe_pattern
    from .frames import open_source
    from .lan import Lan, open_lan
    from .scanner import Scan, Scanner
    from .watchdog import Watchdog

    setup_logging(config.log_level, config.device_id)

    def print_scan(scan: Scan) -> None:
        """One line per verdict, and one more the first time a held code is read again; further
        frames of it print nothing, so a code left in view cannot flood the journal."""
        if scan.repeats > 1:
            return
        verdict = scan.verdict
        fields = policy.describe(verdict.voucher)
        shown = REPEAT_NOTE if scan.repeated else f"-> {describe_pattern(verdict.reason)}"
        print(
            f"{verdict.reason:<16} voucher {fields['voucher_id'] or '-'}  deal {fields['deal'] or '-'}"
            f"  {shown}{_why(verdict.reason, verdict.detail)}",
            flush=True,
        )

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # systemd's stop ends the loop cleanly
    try:
        with _open_when_there_is_space(config) as counter:
            decoder = None if config.camera.source == "keyboard" else _open_decoder(config)
            gpio = config.gpio
            with (
                Watchdog.from_environment() as watchdog,
                open_source(config.camera) as source,
                FeedbackPanel(
                    gpio.accept, gpio.reject, gpio.buzzer, signal_seconds=gpio.signal_seconds
                ) as panel,
                contextlib.closing(open_lan(config) or Closing()) as lan,
            ):

                def after_scan(scan: Scan) -> None:
                    """Called after the commit and the signal: the LAN sends off the scan thread."""
                    if scan.verdict.is_accepted and not scan.repeated and isinstance(lan, Lan):
                        lan.announce()
                    print_scan(scan)

                scanner = Scanner(
                    source,
                    decoder,
                    counter,
                    panel,
                    debounce_seconds=config.decoder.debounce_seconds,
                    on_scan=after_scan,
                    heartbeat=watchdog.feed,
                )
                watchdog.ready(feeding=config.camera.source != "keyboard")  # a scanner waits on a person
                scanner.run()
                watchdog.stopping()
                panel.wait_for_idle(SIGNAL_DRAIN_SECONDS)  # let the last verdict be seen
    except KeyboardInterrupt:
        pass  # a scan cut short was rolled back and never signalled
    return EXIT_OK


def _open_when_there_is_space(config: DeviceConfig) -> Counter:
    """Open the counter, waiting while the disk is too full for SQLite to open the ledger at all
    (its shared-memory file needs space): exiting would stop the unit for good, and nothing can be
    accepted meanwhile either way. A ``ledger_full`` line says so at each try."""
    pause, longest = SPACE_WAIT_SECONDS
    while True:
        try:
            return Counter.open(config)
        except LedgerFull as exc:
            event(get_logger("run"), "ledger_full", logging.ERROR, error=str(exc), retry_seconds=pause)
        time.sleep(pause)
        pause = min(longest, pause * 2)


# -- verify ---------------------------------------------------------------------------------


def _inputs(items: list[str]) -> Iterator[tuple[str, bool]]:
    """The inputs in order, each with whether it came from stdin; ``-`` expands to stdin's lines,
    read one at a time as they arrive."""
    for item in items:
        if item != "-":
            yield item, False
            continue
        for line in keep_undecodable(sys.stdin):  # a garbled line is judged, not fatal
            if line.strip():
                yield line.strip(), True


def _is_file(path: Path) -> bool:
    """Whether an input names an image file (a token is never a file, and may be too long for one)."""
    try:
        return path.is_file()
    except OSError:
        return False


class _StopAfterCurrent:
    """Ctrl-C (SIGINT) for ``verify``: while an input is judged, recorded and answered, it only asks
    to stop after that input; while waiting for the next input (a blocked stdin read) it stops at
    once. What was answered was committed first, so nothing is cut in half and nothing is noisy."""

    def __init__(self) -> None:
        self.requested = False
        self._waiting = False

    def __call__(self, signum: int, frame: object) -> None:
        self.requested = True
        if self._waiting:
            raise KeyboardInterrupt

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Waiting for the next input: an interrupt ends the wait (KeyboardInterrupt)."""
        self._waiting = True
        try:
            if self.requested:
                raise KeyboardInterrupt
            yield
        finally:
            self._waiting = False


def verify_inputs(args: argparse.Namespace, config: DeviceConfig) -> int:
    """Ctrl-C stops after the current input; the exit code is then that of the verdicts so far
    (0 all accepted, 1 any rejected), or 2 when nothing was judged."""
    stop = _StopAfterCurrent()
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


def _verify(args: argparse.Namespace, config: DeviceConfig, stop: _StopAfterCurrent) -> int:
    decoder: Decoder | None = None
    all_accepted, judged = True, 0
    with Counter.open_dry_run(config) if args.dry_run else Counter.open(config) as counter:
        inputs = _inputs(args.inputs)
        while not stop.requested:
            try:
                with stop.waiting():
                    item, from_stdin = next(inputs)
            except (StopIteration, KeyboardInterrupt):
                break
            judged += 1
            path = Path(item)
            if _is_file(path):
                decoder = decoder or _open_decoder(config)
                from .frames.files import load_gray

                try:
                    codes = decoder.decode(load_gray(path))
                except (FrameError, DecoderError) as exc:
                    codes, problem = [], str(exc)
                else:
                    problem = f"no QR code found in {item}"
                if not codes:
                    _unjudged(args, item, problem)
                    all_accepted = False
                    continue
                code = codes[0]
            elif not from_stdin and names_a_file(item):  # stdin carries codes: a scanner's junk is judged
                _unjudged(args, item, f"{'not a file' if os.path.exists(item) else 'no such file'}: {item}")
                all_accepted = False
                continue
            else:
                code = item
            try:
                verdict = counter.scan(code, record=not args.dry_run)
            except LedgerError as exc:  # judged, but not recorded: so not accepted
                shown = _shorten(safe_code(item))
                print(
                    f"shopcardd-device verify: {shown} not recorded, so not accepted: {exc}", file=sys.stderr
                )
                return EXIT_NOT_RECORDED
            all_accepted &= verdict.is_accepted
            _answer(args, item, verdict.reason, policy.describe(verdict.voucher), verdict.detail)
    if not judged:
        if not stop.requested:  # an empty stdin: nothing judged is not "all accepted"
            print(f"shopcardd-device verify: {NO_INPUT}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK if all_accepted else EXIT_REJECTED


def _unjudged(args: argparse.Namespace, item: str, problem: str) -> None:
    """An INPUT that gave no code to judge (a missing file, an image without a QR code): answered
    bad_format but not recorded, since nothing was scanned."""
    _answer(args, item, Reason.BAD_FORMAT, None, problem)


def _shorten(item: str) -> str:
    """An input as the readable lines show it: at most 40 characters."""
    return item if len(item) <= 40 else item[:37] + "..."


def _answer(
    args: argparse.Namespace, item: str, reason: Reason, fields: dict[str, str | None] | None, detail: str
) -> None:
    """One line per INPUT; the input is echoed as the ledger stores a raw code (``safe_code``), and
    the detail says why in words (JSON: ``null`` when there is nothing to add)."""
    fields = fields or policy.describe(None)
    item = safe_code(item)
    if args.json:
        answer = {"input": item, "result": str(reason), **fields, "detail": safe_code(detail) or None}
        line = json.dumps(answer, separators=(",", ":"))
    else:
        shown = _shorten(item)
        line = f"{reason:<16} {shown}  voucher {fields['voucher_id'] or '-'}  deal {fields['deal'] or '-'}"
        line += _why(reason, detail)
    print(line, flush=True)


def _why(reason: Reason, detail: str) -> str:
    """The end of a refusal's readable line: why, in words (``redeemed at counter till-2 ...``)."""
    return f"  ({safe_code(detail)})" if detail and not reason.is_accepted else ""


# -- status ---------------------------------------------------------------------------------


def _readable(moment: float | None, config: DeviceConfig) -> str | None:
    """A time for the operator: in the shop's time zone (``timezone``), as a person reads it."""
    return None if moment is None else readable_time(moment, config.timezone)


STATUS_CONFLICTS: Final = 100
"""The most conflicts ``status --json`` lists (the latest); ``conflict_count`` counts them all."""
STATUS_CONFLICT_LINES: Final = 10
"""The most conflicts ``status`` shows as text."""


def status_report(counter: Counter) -> dict[str, Any]:
    ledger, now = counter.ledger, counter.time()  # one reading: clock, floor and health agree
    health = counter.health(now)
    return {
        "device_id": counter.config.device_id,
        "merchant": counter.config.merchant_id,
        "accepted": ledger.accepted_count(),
        "rejected": ledger.rejected_counts(),
        "unsynced": ledger.unsynced_count(),
        "conflict_count": ledger.conflict_count(),
        "conflicts": [
            {
                "voucher_id": r.voucher_id,
                "deal": r.deal,
                "redeemed_at": r.redeemed_at,
                "first_device_id": r.first_device_id,
                "first_redeemed_at": r.first_redeemed_at,
            }
            for r in ledger.conflicts(STATUS_CONFLICTS)
        ],
        "keys": [
            {
                "kid": key.kid,
                "alg": key.alg,
                "not_before": key.not_before,
                "expires": key.expires,
                "valid_now": now.now is not None and key.is_valid_at(now.now),
            }
            for key in counter.keys
        ],
        "keyset": {
            "issued_at": counter.keyset_issued_at,
            "valid_until": counter.keyset_valid_until,
            "stale": health.keyset_stale,
        },
        "revocations": ledger.revocation_count(),
        "peers": sorted(ledger.peers()),
        "lan": _lan_report(counter),
        "time_floor": now.floor,
        "last_sync": ledger.last_sync,
        "sync_failing": _sync_failing(ledger.sync_failure),
        "clock": str(now.state),
        "clock_synchronised": now.synchronised,
        "trusted_time": now.now,
        "degraded": health.is_degraded,
        "ledger": safe_code(str(counter.config.ledger_path)),
        "ledger_exists": counter.config.ledger_path.is_file(),
    }


def _sync_failing(failure: SyncFailure | None) -> dict[str, Any] | None:
    return None if failure is None else {"since": failure.since, "reason": failure.reason}


def _lan_report(counter: Counter) -> dict[str, Any]:
    """The shop LAN as the ledger saw it: each counter heard or sent to, and whether still enrolled."""
    config, ledger = counter.config, counter.ledger
    enrolled = ledger.peers()
    peers = [
        {
            "device_id": peer.device_id,
            "address": peer.address,
            "last_heard": peer.last_heard,
            "received": peer.received,
            "sent": peer.sent,
            "enrolled": peer.device_id in enrolled,
        }
        for peer in ledger.lan_peers()
    ]
    return {
        "enabled": config.lan.enabled and config.device_key is not None,
        "port": config.lan.port,
        "peers_seen": sum(p["last_heard"] is not None for p in peers),
        "last_heard": max((p["last_heard"] for p in peers if p["last_heard"] is not None), default=None),
        "received": sum(p["received"] for p in peers),
        "sent": sum(p["sent"] for p in peers),
        "peers": peers,
    }


def show_status(args: argparse.Namespace, config: DeviceConfig) -> int:
    # Only reads, so it works on a read-only ledger; before the first scan or sync there is no
    # ledger, and none is made: the counts are those of an empty one.
    with Counter.open_dry_run(config) as counter:
        report = status_report(counter)
    if args.json:
        print(json.dumps(report, separators=(",", ":")), flush=True)  # one value per line
        return EXIT_OK
    rejected = ", ".join(f"{reason} {count}" for reason, count in report["rejected"].items()) or "none"
    keys = ", ".join(
        f"{k['kid']} ({k['alg']}{'' if k['valid_now'] else ', past its window'})" for k in report["keys"]
    )
    where = report["ledger"] if report["ledger_exists"] else f"none yet at {report['ledger']}"
    print(f"device {report['device_id']} at merchant {report['merchant']}  (ledger {where})")
    print(f"  accepted   {report['accepted']}")
    print(f"  rejected   {rejected}")
    print(f"  unsynced   {report['unsynced']}")
    print(f"  conflicts  {report['conflict_count']}")
    for conflict in report["conflicts"][:STATUS_CONFLICT_LINES]:
        print(
            f"    voucher {conflict['voucher_id']}  deal {conflict['deal']}: redeemed here "
            f"{_readable(conflict['redeemed_at'], config)}, first at {conflict['first_device_id']} "
            f"{_readable(conflict['first_redeemed_at'], config) or '(time unknown)'}"
        )
    print(f"  keys       {keys}")
    keyset = report["keyset"]
    if keyset["valid_until"] is None:
        print("  key set    from the keyset file (not synced yet)")
    else:
        stale = "  STALE: sync the device" if keyset["stale"] else ""
        print(f"  key set    synced, valid until {_readable(keyset['valid_until'], config)}{stale}")
    print(f"  revoked    {report['revocations']}  (vouchers and deals)")
    print(f"  peers      {', '.join(report['peers']) or 'none'}")
    lan = report["lan"]
    state = f"on, port {lan['port']}" if lan["enabled"] else "off"
    print(
        f"  shop LAN   {state}: {_count(lan['peers_seen'], 'peer')} seen, last heard "
        f"{_readable(lan['last_heard'], config) or 'never'}; records received {lan['received']}, "
        f"sent {lan['sent']}"
    )
    for peer in lan["peers"]:
        if peer["last_heard"] is not None or peer["sent"]:
            print(
                f"    {peer['device_id']} at {peer['address'] or '?'}: last heard "
                f"{_readable(peer['last_heard'], config) or 'never'}, received {peer['received']}, "
                f"sent {peer['sent']}{'' if peer['enrolled'] else ' (no longer enrolled)'}"
            )
    synchronised = "synchronised" if report["clock_synchronised"] else "not synchronised"
    print(
        f"  time floor {_readable(report['time_floor'], config) or 'none'}  "
        f"(clock {report['clock']}, {synchronised})"
    )
    print(f"  last sync  {_readable(report['last_sync'], config) or 'never'}")
    if failing := report["sync_failing"]:
        since = datetime.fromtimestamp(failing["since"], UTC).isoformat(timespec="seconds")
        print(f"  WARNING: sync failing since {since}: {failing['reason']}")
    if report["degraded"]:
        print(
            "  WARNING: amber: the clock cannot be trusted, no key is in force, or the key set is stale; "
            "sync the device"
        )
    return EXIT_OK


# -- sync -----------------------------------------------------------------------------------


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def run_sync(args: argparse.Namespace, config: DeviceConfig) -> int:
    """One sync; the reason of a failure in one line (exit 1)."""
    from .sync import MAX_BATCH, SyncFailed, load_device_key, sync

    setup_logging(config.log_level, config.device_id)
    load_device_key(config)  # a configuration error (exit 2) before anything is opened
    with Counter.open(config) as counter:
        try:
            report = sync(config, counter.ledger)
        except SyncFailed as exc:
            print(f"shopcardd-device sync: {exc}", file=sys.stderr)
            return EXIT_REJECTED
    conflicts = f" ({_count(report.conflicts, 'conflict')})" if report.conflicts else ""
    halved = (
        f" in batches halved to {report.batch_size} (larger ones were refused with HTTP 413)"
        if report.batch_size < min(config.sync.batch_size, MAX_BATCH)
        else ""
    )
    print(
        f"synced with {config.backend_url}: {_count(report.uploaded, 'redemption')} up{conflicts}{halved}, "
        f"{_count(report.revoked, 'revocation')} down, key set {' '.join(report.kids)} valid until "
        f"{_readable(report.keys_valid_until, config)}, {_count(report.peers, 'peer')}, "
        f"server time {_readable(report.server_time, config)}",
        flush=True,
    )
    return EXIT_OK


# -- salvage --------------------------------------------------------------------------------


def run_salvage(args: argparse.Namespace, config: DeviceConfig) -> int:
    """Salvage a damaged ledger; say what was kept, copied and lost."""
    from .salvage import salvage

    path = config.ledger_path
    done = salvage(path)
    if done is None:
        print(
            f"ledger {safe_code(str(path))} passes its integrity check: nothing to salvage, nothing changed"
        )
        return EXIT_OK
    copied = ", ".join(f"{_count(n, 'row')} of {table}" for table, n in sorted(done.copied.items()) if n)
    print(f"kept the damaged ledger as {safe_code(str(done.kept_at))} (never deleted)")
    print(
        f"copied into a fresh ledger at {safe_code(str(path))}: {copied or 'nothing (no row could be read)'}"
    )
    if done.lost_redemptions:
        print(
            f"{_count(len(done.lost_redemptions), 'redemption')} named by an index could not be read: "
            f"revoked here, so they stay refused (as revoked): {' '.join(done.lost_redemptions)}"
        )
    print("start the counter again (systemctl start shopcardd-verifier shopcardd-sync.timer)", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
