"""The FastAPI application: ``create_app(settings)`` assembles it; the lifespan opens its parts.

The claim gate, the document store, the voucher signer and the user token verifier are
opened in the lifespan, so each worker process opens its own clients after any fork (a
client made before a fork is shared by accident). ``create_app_from_env`` is the factory
uvicorn calls in each worker process of ``serve --workers N``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from .api.deps import Runtime
from .api.errors import BodySizeLimit, install_error_handlers
from .api.models import Problem as ProblemModel
from .api.routes import claims, deals, health, keys
from .claims import ClaimService
from .gates.base import ClaimGate
from .identity import build_verifier
from .logging import configure_logging
from .metrics import Metrics
from .settings import Settings
from .signing import load_signer
from .stores.base import DocumentStore

log = logging.getLogger("shopcardd_backend")


def open_gate(settings: Settings) -> ClaimGate:
    if settings.redis_url:
        from .gates.redis import RedisClaimGate

        return RedisClaimGate(settings.redis_url, prefix=settings.redis_prefix)
    from .gates.sqlite import SqliteClaimGate

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteClaimGate(settings.data_dir / "gate.sqlite3")


def open_store(settings: Settings) -> DocumentStore:
    if settings.mongodb_uri:
        from .stores.mongo import MongoDocumentStore

        store = MongoDocumentStore(settings.mongodb_uri, settings.mongodb_database)
        store.ensure_indexes()
        return store
    from .stores.sqlite import SqliteDocumentStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteDocumentStore(settings.data_dir / "store.sqlite3")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    with contextlib.ExitStack() as stack:
        store = open_store(settings)
        stack.callback(store.close)
        gate = open_gate(settings)
        stack.callback(gate.close)
        signer = load_signer(settings.keys_dir, settings.signing_alg, settings.signing_kid)
        service = ClaimService(gate, store, signer, app.state.metrics)
        app.state.runtime = Runtime(gate, store, signer, build_verifier(settings), service)
        log.info(
            "backend started",
            extra={"profile": settings.profile, "data_dir": str(settings.data_dir), "kid": signer.key.kid},
        )
        yield
        log.info("backend stopping")


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="ShopCardd claim API",
        version="1",
        summary="Flash-sale deals and claims; vouchers signed for offline checking at the counter.",
        lifespan=lifespan,
        responses={"default": {"model": ProblemModel, "description": "An RFC 9457 problem document"}},
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    for router in (deals.router, claims.router, keys.router, health.router):
        app.include_router(router)
    return app


def create_app_from_env() -> FastAPI:
    """The app factory of a worker process: settings from its environment."""
    settings = Settings()
    configure_logging(settings.log_level, settings.access_log)
    return create_app(settings)
