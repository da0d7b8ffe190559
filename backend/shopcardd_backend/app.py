"""The FastAPI application: ``create_app(settings)`` assembles it; the lifespan opens its parts.

The claim gate, the document store, the voucher signer and the user token verifier are
opened in the lifespan, so each worker process opens its own clients after any fork (a
client made before a fork is shared by accident). ``create_app_from_env`` is the factory
uvicorn calls in each worker process of ``serve --workers N``. ``check_startup`` opens and
closes the same parts before uvicorn starts, so ``serve`` reports a bad setting or an
unreachable store in one line instead of uvicorn's lifespan traceback (and exit 3).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from .api.deps import Runtime
from .api.errors import install_error_handlers
from .api.middleware import BodyLimits, HeadAsGet
from .api.models import ProblemDocument
from .api.routes import claims, deals, health, keys
from .claims import ClaimService
from .gates.base import ClaimGate
from .identity import build_verifier
from .logging import configure_logging
from .metrics import Metrics
from .settings import Settings, SettingsError
from .signing import load_signer
from .stores.base import DocumentStore

log = logging.getLogger("shopcardd_backend")


def open_gate(settings: Settings) -> ClaimGate:
    if settings.redis_url:
        from .gates.redis import RedisClaimGate

        return RedisClaimGate(settings.redis_url, prefix=settings.redis_prefix)
    from .gates.sqlite import SqliteClaimGate

    return SqliteClaimGate(settings.make_data_dir() / "gate.sqlite3")


def open_store(settings: Settings) -> DocumentStore:
    if settings.mongodb_uri:
        from .stores.mongo import MongoDocumentStore

        store = MongoDocumentStore(settings.mongodb_uri, settings.mongodb_database)
        store.ensure_indexes()
        return store
    from .stores.sqlite import SqliteDocumentStore

    return SqliteDocumentStore(settings.make_data_dir() / "store.sqlite3")


def open_runtime(settings: Settings, metrics: Metrics, stack: contextlib.ExitStack) -> Runtime:
    """Open the store, the gate, the signer and the user token verifier; ``stack`` closes them."""
    settings.make_data_dir()  # the signing keys live there whatever the profile
    store = open_store(settings)
    stack.callback(store.close)
    gate = open_gate(settings)
    stack.callback(gate.close)
    kid = settings.signing_kid
    if kid is not None and not (settings.keys_dir / f"{kid}.private.pem").is_file():
        raise SettingsError(f"SHOPCARDD_SIGNING_KID: no private key {kid!r} in {settings.keys_dir}")
    signer = load_signer(settings.keys_dir, settings.signing_alg, kid)
    service = ClaimService(gate, store, signer, metrics)
    return Runtime(gate, store, signer, build_verifier(settings), service)


def check_startup(settings: Settings) -> None:
    """Open and close what each worker's lifespan opens (making the signing key if missing)."""
    with contextlib.ExitStack() as stack:
        open_runtime(settings, Metrics(), stack)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    with contextlib.ExitStack() as stack:
        app.state.runtime = runtime = open_runtime(settings, app.state.metrics, stack)
        where = {"profile": settings.profile, "data_dir": str(settings.data_dir)}
        log.info("backend started", extra={**where, "kid": runtime.signer.key.kid})
        yield
        log.info("backend stopping")


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="ShopCardd claim API",
        version="1",
        summary="Flash-sale deals and claims; vouchers signed for offline checking at the counter.",
        lifespan=lifespan,
        responses={"default": {"model": ProblemDocument, "description": "An RFC 9457 problem document"}},
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_error_handlers(app)
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout_seconds)
    app.add_middleware(HeadAsGet, router=app.router)
    for router in (deals.router, claims.router, keys.router, health.router):
        app.include_router(router)
    return app


def create_app_from_env() -> FastAPI:
    """The app factory of a worker process: settings from its environment."""
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.access_log)
    return create_app(settings)
