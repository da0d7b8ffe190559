"""Queue workers: one handler per job, run by RabbitMQ's consumer or in-process (``base.py``).

The runtime builds a job's handler (``Runtime.handler``): the workers know nothing of it."""

from __future__ import annotations

from typing import Final

JOBS: Final = ("persist", "notify", "analytics")
