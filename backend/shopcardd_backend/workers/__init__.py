"""Queue workers: one handler per job, run by RabbitMQ's consumer or in-process (``base.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ..runtime import Runtime
    from .base import EventHandler

JOBS: Final = ("persist", "notify", "analytics")


def build_handler(job: str, runtime: Runtime) -> EventHandler:
    """The handler of ``job`` (one of ``JOBS``), on the runtime's store and settings."""
    if job == "persist":
        from .persist import PersistHandler

        return PersistHandler(runtime.store)
    if job == "notify":
        from .notify import NotifyHandler

        return NotifyHandler.from_settings(runtime.store, runtime.settings)
    if job == "analytics":
        from .analytics import AnalyticsHandler

        return AnalyticsHandler(runtime.store)
    raise ValueError(f"no worker {job!r}: choose one of {', '.join(JOBS)}")
