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
import errno
import logging
import os
import re
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from shopcardd_commands.commandline import CommandParser, whole_number

from .workers import JOBS

if TYPE_CHECKING:
    from .settings import Settings

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


SERVE_DESCRIPTION = """\
Run the claim API. The environment chooses the profile:
  embedded  no settings: SQLite claim gate and document store in SHOPCARDD_DATA_DIR
            (default ./data), for development, demos and one small shop
  scaled    SHOPCARDD_REDIS_URL moves the claim gate to Redis, SHOPCARDD_MONGODB_URI the
            document store to MongoDB (each on its own; Redis is what scales)
Whatever the profile, the voucher signing keys live in SHOPCARDD_DATA_DIR/keys (one is made
on first start). --workers runs that many processes of the same profile. Other variables:
SHOPCARDD_USER_JWKS or SHOPCARDD_USER_SECRET (the identity provider), SHOPCARDD_ENVIRONMENT,
SHOPCARDD_DEVICE_AUDIENCE (the backend URL counters sign their sync tokens for; required in
production, and behind a proxy), SHOPCARDD_LOG_LEVEL, ... (see docs/backend-api.md); an
unknown SHOPCARDD_* name is refused.
"""


class CommandError(Exception):
    """A command that cannot run as asked; the message says why (exit 1)."""


class UsageError(Exception):
    """An argument refused past argparse's own checks; the message says why (exit 2)."""


def user_id(text: str) -> str:
    """An argparse type: a user id the API accepts in a token (the API's own rule), in NFC."""
    from .identity import USER_ID_RULE, normal_user_id

    normal = normal_user_id(text)
    if normal is None:
        raise argparse.ArgumentTypeError(f"user id {_shown(text)}: use {USER_ID_RULE}")
    return normal


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"


def merchant_id(text: str) -> str:
    """An argparse type: a merchant id a voucher can carry (``register_merchant``'s own rule)."""
    from .identity import MERCHANT_ID, MERCHANT_ID_RULE

    if not MERCHANT_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"merchant id {_shown(text)}: use {MERCHANT_ID_RULE}")
    return text


DEAL_ID_RULE = "1 to 64 letters, digits, '_' or '-'"


def deal_id(text: str) -> str:
    """An argparse type: the form of the deal ids the API makes (no Redis hash-tag braces)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text):
        raise argparse.ArgumentTypeError(f"deal id {_shown(text)}: use {DEAL_ID_RULE}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shopcardd-backend",
        description="The ShopCardd backend: the claim API and its operator commands.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)

    serve = sub.add_parser(
        "serve",
        help="run the claim API (profile chosen by the environment)",
        description=SERVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=whole_number(1, 65535),
        default=8000,
        help="port to listen on, 1-65535 (default 8000); one already in use is refused (exit 1)",
    )
    serve.add_argument("--workers", type=whole_number(1), default=1, help="worker processes (default 1)")

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

    deal = sub.add_parser("deal", help="operator actions on deals")
    deal_sub = deal.add_subparsers(dest="deal_command", required=True, metavar="ACTION")
    rebuild = deal_sub.add_parser(
        "rebuild",
        help="load a deal the claim gate lost back into it from the document store",
        description="After the claim gate lost its data (a Redis restarted empty), claims, reads and "
        "cancels of its deals answer 503 rather than risk selling more than the stock. This loads "
        "the deal back with every voucher issued on it that the backend still knows: those in the "
        "document store plus the claim events still waiting in the outbox (stock left = stock - "
        "vouchers, per-user counts and replays from them, cancelled if the store says so), and "
        "prints both counts. Claim events already relayed to RabbitMQ but not yet stored by the "
        "persist worker would be missed (an undercount sells more than the stock), so with "
        "SHOPCARDD_AMQP_URL set it refuses while the persist queue holds messages, or cannot be "
        "read, unless --force is given. A deal the gate still holds is left alone.",
    )
    rebuild.add_argument("deal_id", type=deal_id, metavar="DEAL", help="the deal's id")
    rebuild.add_argument(
        "--force",
        action="store_true",
        help="rebuild even though the persist queue holds messages or cannot be read (you checked "
        "that none are of this deal)",
    )

    stats = sub.add_parser(
        "stats",
        help="print a deal's figures as a table",
        description="A deal's figures for the terminal: its status and stock left, vouchers issued "
        "and redeemed, the notices sent to its customers (and refused) per channel, and per minute "
        "(UTC) the claims issued and refused by reason with the stock left after that minute. The "
        "per-minute counts are the analytics worker's and the notices the notify worker's: a claim "
        "shows once its event has been through the queue.",
    )
    stats.add_argument("deal_id", type=deal_id, metavar="DEAL", help="the deal's id")

    relay = sub.add_parser(
        "relay",
        help="relay the outbox's claim events to RabbitMQ (long-running; SIGTERM ends it)",
        description="Move the claim events of the outbox (Redis streams, or the SQLite outbox) to "
        "RabbitMQ (SHOPCARDD_AMQP_URL) with publisher confirms; an event leaves the outbox only "
        "once RabbitMQ confirmed it. Several relays may run at once and share the work; the events "
        "a relay that died had taken are taken over once its lease (--lease) runs out. Declares "
        "the exchange and queues it needs. Runs until SIGTERM or SIGINT, then finishes the batch "
        "in hand and exits 0. Logs one JSON line per event of note on stderr.",
    )
    relay.add_argument(
        "--batch", type=whole_number(1, 10_000), default=500, help="events per batch (default 500)"
    )
    relay.add_argument(
        "--lease",
        type=whole_number(1, 3600),
        default=30,
        metavar="SECONDS",
        help="how long an event taken by a relay is its own before another may take it over (default 30)",
    )
    worker = sub.add_parser(
        "worker",
        help="run a queue worker: persist, notify or analytics (long-running; SIGTERM ends it)",
        description="Consume one job's queue on RabbitMQ (SHOPCARDD_AMQP_URL): persist stores each "
        "issued voucher in the document store; notify emails (SHOPCARDD_SMTP_URL) and texts "
        "(SHOPCARDD_SMS_URL) the customer, once per voucher; analytics counts claims issued and "
        "refused per deal and minute (GET /v1/deals/{deal_id}/stats). Acknowledges a message only "
        "once its work is durable; a message that cannot be read, or fails for good, is parked in "
        "the job's .parked queue; one that keeps failing is parked after a few deliveries. A lost "
        "broker is reconnected with backoff. SIGTERM or SIGINT finishes the batch in hand, exit 0.",
    )
    worker.add_argument("name", choices=list(JOBS), metavar="JOB", help="persist, notify or analytics")
    worker.add_argument(
        "--prefetch",
        type=whole_number(1, 10_000),
        default=None,
        help="messages RabbitMQ may hand over before they are acknowledged (default: twice a batch)",
    )
    return parser


def _settings() -> Settings:
    from .settings import Settings

    return Settings.from_env()


def check_can_listen(host: str, port: int) -> None:
    """Bind ``host:port`` as uvicorn will, and let go: a port in use fails here in one line, not
    as uvicorn's error after the app has started (exit 3 and a screenful of log lines)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CommandError(f"cannot listen on {host}: {exc.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CommandError(
                        f"port {port} on {host} is already in use (another server listens there); "
                        "choose another with --port"
                    ) from None
                raise CommandError(f"cannot listen on port {port} of {host}: {exc.strerror}") from None


APP_FACTORY = "shopcardd_backend.app:create_app_from_env"


def cmd_serve(args: argparse.Namespace) -> int:
    return serve_api(args.host, args.port, args.workers)


def serve_api(host: str, port: int, workers: int, factory: str = APP_FACTORY, one_write: bool = True) -> int:
    """Run ``factory`` (an import string of an app factory) under uvicorn in ``workers`` processes,
    after the checks of ``serve``. ``shopcardd-bench claims`` serves its own factory (the app plus
    a bare endpoint to compare with) through here, so it measures the server ``serve`` runs;
    ``one_write=False`` is uvicorn's own HTTP protocol, the bare endpoint's naive server."""
    import uvicorn

    settings = prepare_serving(host, port, workers)
    # uvicorn's own X-Forwarded-For/-Proto rewrite trusts the same proxies as the rate limits
    # (api/addresses.py): not its FORWARDED_ALLOW_IPS, so one setting says whom to believe.
    trusted = [str(network) for network in settings.trusted_proxy_networks]
    from .api.server import OneWriteHttpToolsProtocol

    uvicorn.run(
        factory,
        factory=True,
        http=OneWriteHttpToolsProtocol if one_write else "auto",  # one send(), not two: api/server.py
        workers=workers,
        host=host,
        port=port,
        log_config=None,
        access_log=settings.access_log,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted,
    )
    return 0


def prepare_serving(host: str, port: int, workers: int) -> Settings:
    """What ``serve`` does before the server starts, whichever server it is: logging, the port,
    the start-up checks, the metrics folder shared by ``workers`` processes."""
    from .app import check_startup
    from .logging import configure_logging
    from .metrics import MULTIPROC_ENV
    from .signing import SigningKeyError

    settings = _settings()
    configure_logging(settings.log_level, settings.access_log)
    check_can_listen(host, port)
    # Before uvicorn: what fails in a worker's lifespan fails here instead, in one line. This also
    # makes the signing key, so all workers sign with the same key.
    try:
        check_startup(settings)
    except SigningKeyError as exc:
        raise CommandError(f"voucher signing key: {exc}") from None
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        folder = settings.data_dir / "prometheus"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ[MULTIPROC_ENV] = str(folder.resolve())
    return settings


def cmd_merchant_create(args: argparse.Namespace) -> int:
    from .identity import register_merchant
    from .runtime import Runtime
    from .stores.base import DuplicateError

    with Runtime(_settings()) as runtime:
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
    from .identity import NoIdentityKey, dev_identity_key, dev_identity_path, mint_user_token

    settings = _settings()
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
    from .trust import rotate_trust

    settings = _settings()
    settings.make_data_dir()
    print(rotate_trust(settings.trust_dir).key.kid)
    return 0


def cmd_deal_rebuild(args: argparse.Namespace) -> int:
    from .deals import DealNotFound, RebuildRefused
    from .runtime import Runtime

    deal_id = args.deal_id
    with Runtime(_settings()) as runtime:
        try:
            report = runtime.deals.rebuild(deal_id, force=args.force)
        except DealNotFound:
            raise CommandError(f"no deal {deal_id!r} in the document store") from None
        except RebuildRefused as exc:
            raise CommandError(str(exc)) from None
    if not report.rebuilt:
        print(f"deal {deal_id} is still in the claim gate with {report.stock_left} vouchers left; left alone")
        return 0
    print(
        f"deal {deal_id} is in the claim gate with {report.stock_left} vouchers left "
        f"({report.in_store} vouchers in the store, {report.in_outbox_only} more still in the outbox)"
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from .deals import DealNotFound
    from .runtime import Runtime
    from .stats import deal_figures
    from .stores.base import CLAIM_COUNTS

    with Runtime(_settings()) as runtime:
        deal = runtime.store.get_deal(args.deal_id)
        if deal is None:
            raise CommandError(f"no deal {args.deal_id!r} in the document store")
        try:
            figures = deal_figures(runtime.deals, deal.deal_id, deal.merchant_id)
        except DealNotFound:
            raise CommandError(f"no deal {args.deal_id!r} in the document store") from None
    view = figures.view
    print(f"deal {deal.deal_id} ({deal.merchant_id}): {deal.title}")
    print(
        f"status {view.phase}, stock {deal.stock}, left {view.stock_left}, "
        f"vouchers issued {figures.vouchers.issued}, redeemed {figures.vouchers.redeemed}"
    )
    sent = "; ".join(
        f"{channel} sent {counts.sent}, refused {counts.refused}"
        for channel, counts in figures.stats.notices.items()
    )
    print(f"notices {sent}")
    headers = ("minute (UTC)", *CLAIM_COUNTS, "stock_left")
    rows = [
        (minute.minute.strftime("%Y-%m-%d %H:%M"), *(getattr(minute, n) for n in CLAIM_COUNTS), left)
        for minute, (_, left) in zip(figures.stats.minutes, figures.stock_curve, strict=True)
    ]
    rows.append(("total", *(figures.stats.totals[n] for n in CLAIM_COUNTS), view.stock_left))
    widths = [max(len(str(row[i])) for row in (headers, *rows)) for i in range(len(headers))]
    for row in (headers, *rows):
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: a long-running command finishes what it holds, then exits 0."""
    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def _queue_settings(what: str) -> Settings:
    """The settings of a long-running queue command, logging set up; RabbitMQ is required."""
    from .logging import configure_logging

    settings = _settings()
    configure_logging(settings.log_level)
    logging.getLogger("pika").setLevel(max(logging.WARNING, logging.getLogger().level))  # a line a frame
    if not settings.amqp_url:
        raise UsageError(
            f"SHOPCARDD_AMQP_URL is not set: {what} RabbitMQ (without it, the API processes "
            "handle the outbox themselves)"
        )
    return settings


def cmd_relay(args: argparse.Namespace) -> int:
    from .relay import Relay
    from .runtime import Runtime

    settings = _queue_settings("the relay publishes to")
    stop = _stop_on_signals()
    with Runtime(settings) as runtime:
        Relay(runtime.outbox, runtime.publisher, batch_size=args.batch, lease_seconds=args.lease).run(stop)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .queue.rabbitmq_consumer import consume
    from .runtime import Runtime

    settings = _queue_settings("workers consume")
    stop = _stop_on_signals()
    with Runtime(settings) as runtime:
        handler = runtime.handler(args.name)
        try:
            consume(str(settings.amqp_url), handler, stop, prefetch=args.prefetch)
        finally:
            handler.close()
    return 0


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
    from .settings import SettingsError

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


if __name__ == "__main__":
    sys.exit(main())
