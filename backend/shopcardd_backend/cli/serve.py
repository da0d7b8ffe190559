"""``shopcardd-backend serve``: the checks before the claim API starts, then uvicorn."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import socket
from typing import TYPE_CHECKING

from shopcardd_commands.commandline import CommandParser, whole_number

from .common import CommandError, load_settings

if TYPE_CHECKING:
    from ..settings import Settings

SERVE_DESCRIPTION = """\
Run the claim API. The environment chooses the profile:
  embedded  no settings: SQLite claim gate and document store in SHOPCARDD_DATA_DIR
            (default ./data), for development, demos and one small shop
  scaled    SHOPCARDD_REDIS_URL moves the claim gate to Redis, SHOPCARDD_MONGODB_URI the
            document store to MongoDB (each on its own; Redis is what scales). On a Redis
            Cluster (SHOPCARDD_REDIS_CLUSTER=true) list several nodes, comma-separated: a
            process starts from any of them that answers
Whatever the profile, the voucher signing keys live in SHOPCARDD_DATA_DIR/keys (one is made
on first start). --workers runs that many processes of the same profile. Other variables:
SHOPCARDD_USER_JWKS or SHOPCARDD_USER_SECRET (the identity provider), SHOPCARDD_ENVIRONMENT,
SHOPCARDD_DEVICE_AUDIENCE (the backend URL counters sign their sync tokens for; required in
production, and behind a proxy), SHOPCARDD_LOG_LEVEL, ... (see docs/backend-api.md); an
unknown SHOPCARDD_* name is refused.
"""


def add_commands(sub: argparse._SubParsersAction[CommandParser]) -> None:
    """The ``serve`` subcommand and its options."""
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
    from ..api.server import OneWriteHttpToolsProtocol

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
    from ..app import check_startup
    from ..logging import configure_logging
    from ..metrics import MULTIPROC_ENV
    from ..signing import SigningKeyError

    settings = load_settings()
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
