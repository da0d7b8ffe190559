"""``shopcardd-provision``: signing keys, manually issued vouchers and their QR codes.

Run on the backend or a provisioning host: this is where private keys live.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shopcardd_voucher import ALGORITHMS, DEFAULT_ALGORITHM, issue
from shopcardd_voucher.commandline import CommandParser

from .keys import ProvisionError, check_published, keygen, load_signing_key
from .qr import format_list

EXAMPLES = """\
examples:
  shopcardd-provision keygen --alg EdDSA --kid k1 --out keys/
  shopcardd-provision issue --key keys/k1.private.pem --kid k1 \\
      --deal d1 --merchant m1 --user u1 --ttl 86400 > voucher.txt
  shopcardd-provision qr "$(cat voucher.txt)" --out voucher.png
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shopcardd-provision",
        description="Make voucher signing keys, issue vouchers by hand, render them as QR codes.",
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
    iss.add_argument("--ttl", required=True, type=int, metavar="SECONDS", help="lifetime in seconds")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "keygen":
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
    except (ProvisionError, ValueError) as exc:
        print(f"shopcardd-provision {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"shopcardd-provision {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
