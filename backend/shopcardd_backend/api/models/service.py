"""What the service says of itself: its problem documents, its public keys, its health."""

from __future__ import annotations

from pydantic import BaseModel


class ProblemDocument(BaseModel):
    """RFC 9457 problem document (``application/problem+json``), for the OpenAPI schema."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str


class JWKS(BaseModel):
    keys: list[dict[str, object]]


class OutboxState(BaseModel):
    """What waits in the outbox for ``shopcardd-backend relay`` (RabbitMQ named)."""

    events: int
    oldest_seconds: float


class Health(BaseModel):
    status: str
    profile: str | None = None
    outbox: OutboxState | None = None
    detail: str | None = None
    """A warning that leaves the process ready: no relay drains the outbox."""
