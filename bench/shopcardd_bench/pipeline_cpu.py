"""The CPU a sale of ``shopcardd-bench pipeline --rates`` costs, stage by stage, per claim.

Every stage of the pipeline shares this machine's cores: the claims (this bench's own process:
the claim service, and the probe that watches the store), the relay and the three workers
(processes the bench started), and the servers they talk to (the Redis of the gate, RabbitMQ,
the document store), found by the port they listen on when they run on this machine. The sum per
claim says how many claims a second the whole pipeline can carry on these cores, however
well each stage keeps pace with the one before it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .processes import cpu_seconds, total_cpu_seconds
from .services import Process

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
STAGES = ("claims", "relay", "persist", "notify", "analytics", "Redis", "RabbitMQ", "store")
"""The columns, in the order the data flows."""


def listening_pids(port: int) -> list[int]:
    """The processes of this machine that listen on TCP ``port`` (the server behind a URL)."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                sockets.add(f"socket:[{fields[9]}]")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if any(os.readlink(fd) in sockets for fd in (entry / "fd").iterdir()):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


DEFAULT_PORTS = {"redis": 6379, "amqp": 5672, "mongodb": 27017}


def _local_port(url: str) -> int | None:
    """The port of a service URL on this machine, else None (its CPU is not ours to read)."""
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # several hosts (a replica set): not one server of this machine
        return None
    return port if parts.hostname in LOOPBACK else None


def stage_meters(
    stages: dict[str, Process], redis_url: str, amqp_url: str, mongodb_uri: str
) -> dict[str, Callable[[], float]]:
    """A CPU-seconds reading for each stage that can be read here; servers elsewhere have none."""
    meters: dict[str, Callable[[], float]] = {"claims": lambda: cpu_seconds(os.getpid())}
    for name in ("relay", "persist", "notify", "analytics"):
        meters[name] = stages[name].cpu_seconds
    for name, url in (("Redis", redis_url), ("RabbitMQ", amqp_url), ("store", mongodb_uri)):
        port = _local_port(url)
        if port is not None and (pids := listening_pids(port)):
            meters[name] = functools.partial(total_cpu_seconds, pids)
    return meters


def per_claim_us(used: dict[str, float], claims: int) -> dict[str, float]:
    """CPU microseconds per claim, stage by stage, and ``all`` of them together."""
    figures = {name: seconds * 1e6 / claims for name, seconds in used.items()}
    figures["all"] = sum(figures.values())
    return figures


def ceiling(all_us: float, cores: int | None = None) -> float:
    """Claims/s these cores could carry at ``all_us`` CPU microseconds a claim, all stages busy."""
    return (cores or os.cpu_count() or 1) * 1e6 / all_us
