"""Sign and verify operations per second for each voucher algorithm, with the token's
length and the QR version it needs at error correction M. Each figure is the median of
--runs timed batches of --count operations; RS256 signing is the slow one by design.
Baseline: the bare signature check of the same token through pyjwt's algorithm object,
timed in the same run; 'framing' is the full verify's share of that speed (1.00 would
mean parsing, canonical-base64 and claim checks cost nothing)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shopcardd_commands.commandline import whole_number
from shopcardd_voucher.voucher import MAX_ID_LENGTH

if TYPE_CHECKING:
    from shopcardd_voucher import SigningKey


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs", type=whole_number(1), default=5, help="timed batches per figure (default 5)"
    )
    parser.add_argument(
        "--count", type=whole_number(1), default=500, help="operations per batch (default 500)"
    )
    parser.add_argument(
        "--id-length",
        type=whole_number(1, MAX_ID_LENGTH),
        default=8,
        help="length of deal, merchant, user ids (default 8)",
    )


def _median_rate(operation: Callable[[], object], count: int, runs: int) -> float:
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(count):
            operation()
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates)


def _bare_signature_check(token: str, key: SigningKey) -> Callable[[], object]:
    """The signature check alone, as the baseline the full verify is compared with."""
    import jwt
    from jwt.utils import base64url_decode

    header, payload, signature = token.split(".")
    algorithm = jwt.get_algorithm_by_name(key.alg)
    public_key = key.private_key.public_key()
    message, raw = f"{header}.{payload}".encode(), base64url_decode(signature)
    return lambda: algorithm.verify(message, public_key, raw)


def run(args: argparse.Namespace) -> int:
    from shopcardd_provision.qr import qr_version
    from shopcardd_voucher import ALGORITHMS, KeySet, Reason, SigningKey, issue, verify

    ids = {name: (name[0] * args.id_length) for name in ("deal", "merchant", "user")}
    rows = []
    for alg in ALGORITHMS:
        print(
            f"measuring {alg} ({args.runs} x {args.count} signs and verifies) ...",
            file=sys.stderr,
            flush=True,
        )
        key = SigningKey.generate("k1", alg)
        keys = KeySet([key.verification_key()])
        token = issue(key, ttl=86_400, **ids)
        assert verify(token, keys).reason is Reason.ACCEPTED
        sign_rate = _median_rate(lambda key=key: issue(key, ttl=86_400, **ids), args.count, args.runs)
        verify_rate = _median_rate(lambda token=token, keys=keys: verify(token, keys), args.count, args.runs)
        raw_rate = _median_rate(_bare_signature_check(token, key), args.count, args.runs)
        rows.append((alg, sign_rate, verify_rate, verify_rate / raw_rate, len(token), qr_version(token)))

    print(
        f"\nvoucher benchmark: ids of {args.id_length} characters, median of {args.runs} runs x {args.count}"
    )
    columns = (
        ("sign/s", 10),
        ("verify/s", 10),
        ("sign us", 8),
        ("verify us", 9),
        ("framing", 8),
        ("chars", 6),
        ("QR (M)", 7),
    )
    print(f"{'algorithm':<10} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for alg, sign_rate, verify_rate, framing, length, version in rows:
        print(
            f"{alg:<10} {sign_rate:>10,.0f} {verify_rate:>10,.0f} {1e6 / sign_rate:>8.1f} "
            f"{1e6 / verify_rate:>9.1f} {framing:>8.2f} {length:>6} {version:>7}"
        )
    return 0
