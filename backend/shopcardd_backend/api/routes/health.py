"""Liveness, readiness and metrics, for the load balancer and Prometheus."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response

from ..deps import GateDep, SettingsDep, StoreDep
from ..errors import unavailable
from ..models import Health

router = APIRouter(tags=["health"])
log = logging.getLogger("shopcardd_backend.health")


@router.get("/healthz", response_model_exclude_none=True)
async def healthz() -> Health:
    """The process is alive (it checks nothing else)."""
    return Health(status="ok")


@router.get("/readyz", responses={503: {"description": "a store does not answer, with Retry-After"}})
def readyz(store: StoreDep, gate: GateDep, settings: SettingsDep) -> Health:
    """Every store answers and the gate runs its claim step end to end."""
    for name, check in (("store", store.check), ("gate", gate.check)):
        try:
            check()
        except Exception as exc:
            log.warning("not ready", extra={"part": name, "error": repr(exc)})
            retry = getattr(exc, "retry_after", settings.retry_after_seconds)
            raise unavailable(retry, f"the {name} does not answer; see the server's log") from None
    return Health(status="ready", profile=settings.profile)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    """Prometheus metrics: claims by outcome and claim latency."""
    registry = request.app.state.metrics
    return Response(registry.render(), media_type=registry.content_type)
