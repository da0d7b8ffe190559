"""A Redis Cluster of our own on loopback: the machine's redis-server, free ports, killed on exit.

``shopcardd-bench hotdeal`` measures where a hot deal's Redis work goes on one (three primaries,
no replicas); ``tests/backend/test_gate_cluster.py`` fails a primary over on one (three
primaries, a replica each). Both start it here.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from .processes import cpu_seconds


@dataclass
class Cluster:
    """The nodes, port -> redis-server process, of which ``primaries`` serve slots at the start."""

    nodes: dict[int, subprocess.Popen[bytes]]
    primaries: int

    @property
    def url(self) -> str:
        return node_url(next(iter(self.nodes)))

    def primary_urls(self) -> list[str]:
        """The URL of each primary now (``CLUSTER NODES``): as ``SHOPCARDD_REDIS_URL``, a client
        given them all still starts while one of them is down."""
        return [node_url(self._port(node[1])) for node in self._nodes() if "master" in node[2]]

    def cli(self, port: int, *args: str) -> str:
        """``redis-cli -p PORT ARGS...``'s output; a failing command raises."""
        argv = ["redis-cli", "-p", str(port), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout

    def cpu(self) -> dict[int, float]:
        """CPU seconds of each node so far, by port."""
        return {port: cpu_seconds(proc.pid) for port, proc in self.nodes.items()}

    def port_of_slot(self, slot: int) -> int:
        """The port of the primary that serves ``slot`` now (from ``CLUSTER NODES``)."""
        return self._port(self._primary_of(slot)[1])

    def replica_of_slot(self, slot: int) -> int:
        """The port of a replica of the primary that serves ``slot`` now."""
        primary_id, _ = self._primary_of(slot)
        return next(self._port(node[1]) for node in self._nodes() if node[3] == primary_id)

    def wait_ok(self, seconds: float = 60) -> None:
        """Until every node says ``cluster_state:ok`` and every replica is known as one (after a
        start, or a failover: ``cluster_state:ok`` comes before the replicas are told apart)."""
        replicas = len(self.nodes) - self.primaries
        deadline = time.monotonic() + seconds
        while not (
            all("cluster_state:ok" in self.cli(port, "CLUSTER", "INFO") for port in self.nodes)
            and sum("slave" in node[2] for node in self._nodes()) == replicas
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not come up")
            time.sleep(0.1)

    def _nodes(self) -> list[list[str]]:
        """``CLUSTER NODES``: id, address, flags, primary's id, ..., slot ranges."""
        return [line.split() for line in self.cli(next(iter(self.nodes)), "CLUSTER", "NODES").splitlines()]

    def _primary_of(self, slot: int) -> tuple[str, str]:
        for node_id, address, flags, _, _, _, _, _, *ranges in self._nodes():
            spans = [span.partition("-") for span in ranges if "[" not in span]  # not slots migrating
            if "master" in flags and any(int(low) <= slot <= int(high or low) for low, _, high in spans):
                return node_id, address
        raise RuntimeError(f"no primary serves slot {slot}")

    @staticmethod
    def _port(address: str) -> int:
        return int(address.split(":")[1].split("@")[0])  # 127.0.0.1:PORT@BUSPORT


def node_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def cluster_port(taken: Collection[int]) -> int:
    """A free loopback port whose cluster bus port (10,000 higher) is free too, neither of them
    a port or a bus port of the nodes ``taken``."""
    used = {*taken, *(port + 10_000 for port in taken)}
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port > 55_535 or port in used or port + 10_000 in used:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port


@contextlib.contextmanager
def running_cluster(
    folder: Path, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 15_000
) -> Iterator[Cluster]:
    """``primaries`` nodes, each with ``replicas`` replicas, made a cluster with ``redis-cli
    --cluster create`` once every node answers PING; its files and logs in ``folder``."""
    nodes: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for _ in range(primaries * (1 + replicas)):
            port = cluster_port(nodes)
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
            argv += ["--dbfilename", f"{port}.rdb", "--cluster-config-file", f"nodes-{port}.conf"]
            argv += ["--save", "", "--appendonly", "no", "--cluster-enabled", "yes"]
            argv += ["--cluster-node-timeout", str(node_timeout_ms)]
            with (folder / f"redis-{port}.log").open("wb") as log:
                nodes[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        cluster = Cluster(nodes, primaries)
        deadline = time.monotonic() + 20
        for port in nodes:
            while subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True).returncode:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start (see {folder})")
                time.sleep(0.05)
        addresses = [f"127.0.0.1:{port}" for port in nodes]
        create = ["--cluster", "create", *addresses, "--cluster-replicas", str(replicas), "--cluster-yes"]
        cluster.cli(next(iter(nodes)), *create)
        cluster.wait_ok()
        yield cluster
    finally:
        for proc in nodes.values():
            proc.kill()
            proc.wait()
