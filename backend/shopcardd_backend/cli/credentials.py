"""The commands that make a credential: ``merchant create`` (an API key), ``user-token`` (development
bearer tokens) and ``trust-key rotate`` (the key that signs sync answers)."""

from __future__ import annotations

import argparse
import sys

from shopcardd_commands.commandline import CommandParser, whole_number

from .common import CommandError, UsageError, load_settings, merchant_id, user_id


def add_commands(sub: argparse._SubParsersAction[CommandParser]) -> None:
    """The ``merchant``, ``user-token`` and ``trust-key`` subcommands and their options."""
    merchant = sub.add_parser("merchant", help="manage merchants")
    merchant_sub = merchant.add_subparsers(dest="merchant_command", required=True, metavar="ACTION")
    create = merchant_sub.add_parser(
        "create",
        help="register a merchant and print its new API key (last line; shown once)",
        description="Register merchant M. Its API key is printed once, on the last line of stdout; "
        "only the key's SHA-256 is stored.",
    )
    create.add_argument("--merchant", required=True, type=merchant_id, metavar="M", help="the merchant's id")

    token = sub.add_parser(
        "user-token",
        help="mint development bearer tokens, one per user, in order",
        description="Sign a bearer token for each USER with the development identity key that "
        "`serve` made in the data folder (SHOPCARDD_DATA_DIR, default ./data), and say on stderr "
        "which key and folder. It never makes that key: without one in the folder it exits 2 (a "
        "key made elsewhere signs tokens the served backend refuses). Refused when "
        "SHOPCARDD_USER_JWKS or SHOPCARDD_USER_SECRET is set.",
    )
    token.add_argument("users", type=user_id, nargs="+", metavar="USER", help="user ids")
    token.add_argument(
        "--ttl",
        type=whole_number(1),
        default=None,
        metavar="SECONDS",
        help="lifetime (default SHOPCARDD_USER_TOKEN_TTL_SECONDS, 1 day)",
    )

    trust = sub.add_parser("trust-key", help="the key that signs sync answers")
    trust_sub = trust.add_subparsers(dest="trust_command", required=True, metavar="ACTION")
    trust_sub.add_parser(
        "rotate",
        help="make a new trust key, announced by the one in force; print its kid",
        description="Make a new trust key in DATA_DIR/trust and sign its announcement with the key "
        "in force. Counters move their pin to it at their next sync (after the API processes were "
        "restarted to sign with it); the old key and its link are kept, so a counter pinned to any "
        "earlier key still follows.",
    )


def cmd_merchant_create(args: argparse.Namespace) -> int:
    from ..identity import register_merchant
    from ..runtime import Runtime
    from ..stores.base import DuplicateError

    with Runtime(load_settings()) as runtime:
        try:
            api_key = register_merchant(runtime.store, args.merchant)
        except DuplicateError:
            raise CommandError(f"merchant {args.merchant!r} already exists") from None
        except ValueError as exc:  # the store's own check of the id (argparse checked it already)
            raise UsageError(str(exc)) from None
    print(f"merchant {args.merchant} created; its API key (shown once, send it as X-API-Key):")
    print(api_key)
    return 0


def cmd_user_token(args: argparse.Namespace) -> int:
    from ..identity import NoIdentityKey, dev_identity_key, dev_identity_path, mint_user_token

    settings = load_settings()
    if not settings.uses_dev_identity:
        raise CommandError(
            "user tokens come from the identity provider when SHOPCARDD_USER_JWKS/SECRET is set"
        )
    try:
        key = dev_identity_key(settings, create=False)
    except NoIdentityKey as exc:
        raise UsageError(str(exc)) from None
    # The one hint a token refused as "signature does not verify" needs: which key signed it.
    folder = dev_identity_path(settings).parent
    print(f"signing with the development identity key {key.kid} in {folder}", file=sys.stderr)
    ttl = settings.user_token_ttl_seconds if args.ttl is None else args.ttl
    for user in args.users:
        print(mint_user_token(key, settings.user_issuer, user, ttl, audience=settings.user_audience))
    return 0


def cmd_trust_rotate(args: argparse.Namespace) -> int:
    from ..trust import rotate_trust

    settings = load_settings()
    settings.make_data_dir()
    print(rotate_trust(settings.trust_dir).key.kid)
    return 0
