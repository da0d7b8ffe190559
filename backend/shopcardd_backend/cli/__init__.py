"""``shopcardd-backend``: serve the claim API, relay its events, run the queue workers, register
merchants, mint development user tokens, rebuild a deal the claim gate lost, print a deal's figures.

Every command reads the same ``SHOPCARDD_*`` environment, so ``merchant create`` and
``user-token`` act on the stores and keys that ``serve`` uses. Exit codes: 2 for a usage error
(an argument refused as malformed or out of range, checked by argparse before anything is
opened), a settings error or ``user-token`` in a data folder without the identity key, 1 for
a command that cannot do what was asked at run time (a store that does not answer, a merchant
that exists, a deal the store does not hold, a rebuild refused without ``--force``, a port
already in use); each says why in one line on stderr, never a traceback. The long-running
``relay`` and ``worker`` end cleanly (exit 0) on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from shopcardd_commands.commandline import CommandParser

from . import credentials, deals, queues, serve
from .common import CommandError, UsageError
from .credentials import cmd_merchant_create, cmd_trust_rotate, cmd_user_token
from .deals import cmd_deal_rebuild, cmd_stats
from .queues import cmd_relay, cmd_worker
from .serve import cmd_serve

EXAMPLES = """\
examples:
  shopcardd-backend serve --port 8000
  shopcardd-backend merchant create --merchant m1      # the API key is the last line
  shopcardd-backend user-token alice bob               # one bearer token per line
  shopcardd-backend deal rebuild DEAL [--force]        # after the claim gate lost its data
  shopcardd-backend stats DEAL                         # a deal's figures, as a table
  shopcardd-backend relay                              # outbox -> RabbitMQ (SHOPCARDD_AMQP_URL)
  shopcardd-backend worker persist                     # or notify, analytics
environment: SHOPCARDD_DATA_DIR (default ./data), SHOPCARDD_REDIS_URL, SHOPCARDD_MONGODB_URI,
  SHOPCARDD_AMQP_URL, SHOPCARDD_USER_ISSUER, SHOPCARDD_USER_JWKS, SHOPCARDD_USER_SECRET, ...
  (see docs/backend-api.md)
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: each command group adds its subcommands, in the order ``--help`` lists."""
    parser = argparse.ArgumentParser(
        prog="shopcardd-backend",
        description="The ShopCardd backend: the claim API and its operator commands.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    for group in (serve, credentials, deals, queues):
        group.add_commands(sub)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "merchant": cmd_merchant_create,
    "user-token": cmd_user_token,
    "deal": cmd_deal_rebuild,
    "trust-key": cmd_trust_rotate,
    "stats": cmd_stats,
    "relay": cmd_relay,
    "worker": cmd_worker,
}


def _brief(exc: BaseException) -> str:
    """The exception's message on one line, without pymongo's topology dump."""
    return " ".join(str(exc).partition(", Timeout: ")[0].split())


def main(argv: list[str] | None = None) -> int:
    from ..settings import SettingsError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SettingsError as exc:
        print(f"shopcardd-backend: bad settings: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"shopcardd-backend: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"shopcardd-backend: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:  # GateUnavailable, StoreUnavailable: nothing was changed
        print(f"shopcardd-backend: a data store does not answer: {_brief(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or folder the command needs
        print(f"shopcardd-backend: {_brief(exc)}", file=sys.stderr)
        return 1
