"""Liveness, readiness and metrics, for the load balancer and Prometheus."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response

from ..deps import GateDep, RuntimeDep, SettingsDep, StoreDep
from ..errors import unavailable
from ..models import Health, OutboxState

router = APIRouter(tags=["health"])
log = logging.getLogger("shopcardd_backend.health")


@router.get("/healthz", response_model_exclude_none=True)
async def healthz() -> Health:
    """The process is alive (it checks nothing else)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model_exclude_none=True,
    responses={503: {"description": "a store does not answer, with Retry-After"}},
)
def readyz(store: StoreDep, gate: GateDep, settings: SettingsDep, runtime: RuntimeDep) -> Health:
    """Every store answers and the gate runs its claim step end to end. With RabbitMQ named, the
    outbox's backlog too: a backlog no relay drains is a warning in ``detail``, never a 503, as
    this process still serves claims."""
    for name, check in (("store", store.check), ("gate", gate.check)):
        try:
            check()
        except Exception as exc:
            log.warning("not ready", extra={"part": name, "error": repr(exc)})
            retry = getattr(exc, "retry_after", settings.retry_after_seconds)
            raise unavailable(retry, f"the {name} does not answer; see the server's log") from None
    backlog = runtime.relay_backlog()
    if backlog is None:
        return Health(status="ready", profile=settings.profile)
    waited = round(backlog.oldest_seconds(runtime.clock()), 1)
    outbox = OutboxState(events=backlog.events, oldest_seconds=waited)
    warning = runtime.relay_warning(backlog)
    return Health(status="ready", profile=settings.profile, outbox=outbox, detail=warning)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    """Prometheus metrics: claims by outcome, claim latency, the outbox's backlog (looked at now)."""
    request.app.state.runtime.relay_backlog()
    registry = request.app.state.metrics
    return Response(registry.render(), media_type=registry.content_type)
