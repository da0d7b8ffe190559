"""``shopcardd-provision``: signing keys, manually issued vouchers and their QR codes,
counter devices' enrolment bundles, and a private CA with a server certificate for the backend.

Run on the backend or a provisioning host: this is where private keys live.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from shopcardd_commands.commandline import CommandParser
from shopcardd_voucher import ALGORITHMS, DEFAULT_ALGORITHM, issue
from shopcardd_voucher.device_auth import DEVICE_ID, DEVICE_ID_RULE
from shopcardd_voucher.keyfiles import KeyFileError

from .enroll import BUNDLE, DEFAULT_DATA_DIR, EnrolFailed, backend_url, enroll
from .keys import ProvisionError, check_published, keygen, load_signing_key
from .qr import format_list
from .tls import DEFAULT_DAYS, make_tls

API_KEY_ENV = "SHOPCARDD_API_KEY"

EXAMPLES = """\
examples:
  shopcardd-provision keygen --alg EdDSA --kid k1 --out keys/
  shopcardd-provision issue --key keys/k1.private.pem --kid k1 \\
      --deal d1 --merchant m1 --user u1 --ttl 86400 > voucher.txt
  shopcardd-provision qr "$(cat voucher.txt)" --out voucher.png
  SHOPCARDD_API_KEY=sck_... shopcardd-provision enroll --merchant cafe-42 --device till-1 \\
      --backend https://api.example.com --out bundle-till-1/
  shopcardd-provision tls --out tls/ --host shop-server.lan --host 192.168.1.10
"""

ENROLL_EXAMPLE = """The merchant's API key (from `shopcardd-backend merchant create`) is read from
SHOPCARDD_API_KEY, or asked for without echo when that is unset and this runs in a
terminal; never from an argument (arguments show in ps and the shell history).

Writes into DIR (made 0700; nothing in it is ever overwritten):
  device.toml          the device configuration: device_id, merchant_id, data_dir,
                       keyset, backend_url, device_key, trust_key (and ca_file),
                       paths relative to itself
  device.private.pem   the device's Ed25519 key (0600); its public half is enrolled
  jwks.json            the voucher key set, until the device's first sync
  trust-key.json       the backend's trust key, pinned: sync believes only what it signs
  ca.pem               with --ca-file: the private CA of the backend's certificate

Copy DIR to the device as /etc/shopcardd/ and check it there:
  shopcardd-device status --config /etc/shopcardd/device.toml

exit status: 0 enrolled; 1 the backend could not be reached or refused, or DIR already
holds a bundle (why, in one line; DIR is left as it was); 2 a usage error.

example:
  export SHOPCARDD_API_KEY=sck_...
  shopcardd-provision enroll --merchant cafe-42 --device till-1 \\
      --backend https://api.example.com --out bundle-till-1/
"""


def _identifier(text: str) -> str:
    """An argparse type: a merchant or device id (the backend's rule for both)."""
    if not DEVICE_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: use {DEVICE_ID_RULE}")
    return text


def _backend(text: str) -> str:
    try:
        return backend_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--backend ")) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shopcardd-provision",
        description="Make voucher signing keys, issue vouchers by hand, render them as QR codes, "
        "enrol counter devices with the backend.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)

    gen = sub.add_parser(
        "keygen",
        help="generate a signing key and publish its public half in DIR/jwks.json",
        description="Write DIR/KID.private.pem (mode 0600; never overwritten) and add the public "
        "key to DIR/jwks.json, the key set counter devices and the backend load. DIR is made "
        "(mode 0700) when missing; keys already in jwks.json stay, so old vouchers still verify.",
    )
    gen.add_argument(
        "--alg",
        choices=ALGORITHMS,
        default=DEFAULT_ALGORITHM,
        help=f"signature algorithm (default {DEFAULT_ALGORITHM}: shortest vouchers)",
    )
    gen.add_argument(
        "--kid",
        required=True,
        help="key id written into every voucher this key signs: 1 to 16 letters, digits, ., _ or -",
    )
    gen.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the key files")

    iss = sub.add_parser(
        "issue",
        help="sign one voucher and print it on stdout",
        description="Sign one voucher with a private key, for demos, tests and manual issue. "
        "The backend issues vouchers for real sales through its claim API.",
    )
    iss.add_argument("--key", required=True, type=Path, metavar="PEM", help="private key file")
    iss.add_argument("--kid", required=True, help="the key's id, as in jwks.json")
    iss.add_argument("--deal", required=True, help="deal id")
    iss.add_argument("--merchant", required=True, help="merchant id the voucher may be redeemed at")
    iss.add_argument("--user", required=True, help="user id of the voucher's holder")
    iss.add_argument(
        "--ttl",
        required=True,
        type=int,
        metavar="SECONDS",
        help="lifetime in seconds, at most 31622400 (366 days: the longest a counter accepts)",
    )
    iss.add_argument(
        "--jwks",
        type=Path,
        metavar="FILE",
        help="key set that must publish this key under --kid (default: jwks.json beside --key, if any)",
    )

    qr = sub.add_parser(
        "qr",
        help="render a voucher as a QR code image",
        description="Render TOKEN as a QR code (error correction M). The format follows the file "
        f"extension of --out: {format_list()}.",
    )
    qr.add_argument("token", metavar="TOKEN", help="the voucher, or - to read it from stdin")
    qr.add_argument("--out", required=True, type=Path, metavar="FILE", help="image file to write")
    qr.add_argument("--scale", type=int, default=8, help="pixels per module (default 8)")

    enr = sub.add_parser(
        "enroll",
        help="enrol a counter device with the backend and write its bundle",
        description="Make a counter device's Ed25519 key pair, enrol its public key with the backend "
        "(POST /v1/devices) for the merchant whose API key is given, fetch the voucher key set "
        "(GET /.well-known/jwks.json) and the backend's trust key "
        "(GET /.well-known/shopcardd-trust-key.json), and write the device's bundle into DIR. The "
        "backend must be reached over https, unless on loopback: what enrolment fetches decides "
        "what the counter trusts.",
        epilog=ENROLL_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    enr.add_argument("--merchant", required=True, type=_identifier, metavar="M", help="the merchant's id")
    enr.add_argument(
        "--device",
        required=True,
        type=_identifier,
        metavar="D",
        help=f"the new device's id: {DEVICE_ID_RULE}",
    )
    enr.add_argument(
        "--backend",
        required=True,
        type=_backend,
        metavar="URL",
        help="the backend's base URL as the device will reach it (its sync tokens are signed for it); "
        "https://, unless on loopback",
    )
    enr.add_argument(
        "--ca-file",
        type=Path,
        metavar="PEM",
        help="CA certificates for the backend's https certificate (a private CA); copied into the bundle",
    )
    enr.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the bundle")
    enr.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        metavar="PATH",
        help=f"data_dir for device.toml: the device's ledger folder (default {DEFAULT_DATA_DIR})",
    )

    tls = sub.add_parser(
        "tls",
        help="make a private CA and a server certificate for nginx in front of the backend",
        description="Write DIR/ca.pem (the private CA's certificate: give it to every client, such as "
        "the counters), DIR/server.pem (the server's certificate, for every --host) and DIR/server.key "
        "(0600; never overwritten). The CA's own key is thrown away: it signs this one certificate.",
    )
    tls.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the three files")
    tls.add_argument(
        "--host",
        required=True,
        action="append",
        metavar="NAME",
        help="a DNS name or IP address clients reach the server by (repeat for more)",
    )
    tls.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help=f"validity in days (default {DEFAULT_DAYS})"
    )
    return parser


def _api_key() -> str:
    """The merchant's API key: from the environment, or asked for in a terminal."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key and sys.stdin.isatty():
        key = getpass.getpass(
            "merchant API key (shown once by `shopcardd-backend merchant create`): "
        ).strip()
    if not key:
        raise ProvisionError(f"no merchant API key: set {API_KEY_ENV} (or run in a terminal to be asked)")
    return key


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "enroll":
            bundle = enroll(
                args.merchant, args.device, args.backend, args.out, _api_key(), args.data_dir, args.ca_file
            )
            print(
                f"enrolled device {bundle.device_id!r} of merchant {bundle.merchant_id!r}; wrote "
                f"{bundle.folder}/ ({', '.join(BUNDLE)}; voucher keys {', '.join(bundle.kids)})",
                file=sys.stderr,
            )
        elif args.command == "tls":
            made = make_tls(args.out, args.host, args.days)
            print(
                f"wrote {made.ca} (give it to the clients), {made.certificate} and {made.key} (0600) "
                f"for {', '.join(made.hosts)}",
                file=sys.stderr,
            )
        elif args.command == "keygen":
            result = keygen(args.alg, args.kid, args.out)
            print(f"wrote {result.private_key_path} (0600, keep it secret)", file=sys.stderr)
            print(f"added {result.key.alg} key {result.key.kid!r} to {result.jwks_path}", file=sys.stderr)
        elif args.command == "issue":
            key = load_signing_key(args.key, args.kid)
            jwks = args.jwks or args.key.with_name("jwks.json")
            if args.jwks or jwks.exists():
                check_published(key, jwks)
            else:
                print(f"note: no {jwks} beside the key; --kid {args.kid} is not checked", file=sys.stderr)
            print(issue(key, deal=args.deal, merchant=args.merchant, user=args.user, ttl=args.ttl))
        else:
            from .qr import save_qr  # segno only where QR codes are made

            token = sys.stdin.readline().strip() if args.token == "-" else args.token.strip()
            if not args.out.parent.is_dir():  # a typo in --out must not make folders as root
                raise ProvisionError(f"cannot write {args.out}: folder {args.out.parent} does not exist")
            version = save_qr(token, args.out, scale=args.scale)
            print(f"wrote {args.out} (QR version {version}, {len(token)} characters)", file=sys.stderr)
    except EnrolFailed as exc:
        print(f"shopcardd-provision {args.command}: {exc}", file=sys.stderr)
        return 1
    except (ProvisionError, KeyFileError, ValueError) as exc:
        print(f"shopcardd-provision {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"shopcardd-provision {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
