"""The FastAPI application: ``create_app(settings)`` assembles it; the lifespan opens its parts.

The lifespan builds the backend's ``Runtime`` (``runtime.py``, the composition root shared
with every command and worker), so each worker process opens its own clients after any fork
(a client made before a fork is shared by accident). ``create_app_from_env`` is the factory
uvicorn calls in each worker process of ``serve --workers N``. ``check_startup`` opens and
closes the same parts before uvicorn starts, so ``serve`` reports a bad setting or an
unreachable store in one line instead of uvicorn's lifespan traceback (and exit 3).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from .api.addresses import ClientAddresses
from .api.errors import install_error_handlers
from .api.middleware import BodyLimits, HeadAsGet
from .api.models import ProblemDocument
from .api.routes import claims, deals, devices, health, keys, merchants, stats, vouchers
from .api.routes.claims import ClaimFastPath
from .api.routes.devices import SYNC_MAX_BODY_BYTES, SYNC_PATH
from .console.routes import install_console
from .logging import configure_logging
from .metrics import Metrics
from .runtime import Runtime
from .settings import Settings

log = logging.getLogger("shopcardd_backend")


def check_startup(settings: Settings) -> None:
    """Open and close what each worker's lifespan opens (making the signing key if missing)."""
    with Runtime(settings) as runtime:
        runtime.open_api_parts()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    with Runtime(settings, app.state.metrics) as runtime:
        try:
            runtime.open_api_parts()
            runtime.start_background()
            app.state.runtime = runtime
            # The app's own objects (routes, models, clients: a few hundred thousand) live as
            # long as the process: moved out of the collector's sight, a full collection no
            # longer walks them all while the claims in flight wait for it (their p99 was that
            # wait; docs/performance.md).
            gc.collect()
            gc.freeze()
            where = {"profile": settings.profile, "data_dir": str(settings.data_dir)}
            log.info("backend started", extra={**where, "kid": runtime.signer.key.kid})
            yield
            log.info("backend stopping")
        finally:
            await runtime.aclose()


class ClaimAPI(FastAPI):
    """The FastAPI app with the claim's fast path in front of it: a claim sent as documented is
    answered before FastAPI's middleware stack and router are entered (``ClaimFastPath``)."""

    claim_fast_path: ClaimFastPath

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self.claim_fast_path.answered(scope, receive, send):
            await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    app = ClaimAPI(
        title="ShopCardd claim API",
        version="1",
        summary="Flash-sale deals and claims; vouchers signed for offline checking at the counter.",
        lifespan=lifespan,
        # FastAPI's OpenTelemetry hooks, off: our metrics are Prometheus (/metrics), and the hooks
        # ask on every request whether OpenTelemetry is configured, a cost on every claim.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        responses={"default": {"model": ProblemDocument, "description": "An RFC 9457 problem document"}},
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.client_addresses = ClientAddresses(settings.trusted_proxy_networks)
    install_error_handlers(app)
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.max_body_bytes,
        timeout=settings.body_timeout_seconds,
        larger={SYNC_PATH: SYNC_MAX_BODY_BYTES},
    )
    app.add_middleware(HeadAsGet, router=app.router)
    app.claim_fast_path = ClaimFastPath(app.state)
    routers = (deals.router, stats.router, claims.router, devices.router, vouchers.router, merchants.router)
    for router in (*routers, keys.router, health.router):
        app.include_router(router)
    install_console(app)  # the merchant's console at /console (console/)
    return app


def create_app_from_env() -> FastAPI:
    """The app factory of a worker process: settings from its environment."""
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.access_log)
    return create_app(settings)
