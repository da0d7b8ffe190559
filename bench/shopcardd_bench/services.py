"""Servers of our own on loopback for the benches and the tests: RabbitMQ nodes (alone or three
in a cluster), SecantusDB as MongoDB, and the backend's long-running commands as processes.

Each takes free ports, keeps its files in a folder it is given and never touches the machine's
own Redis, RabbitMQ or data. The tests use these too (tests/servers.py): the product never does.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .processes import process_tree, total_cpu_seconds

LOWEST_PORT = 15000


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux; else its default)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port on loopback that nobody listens on (yet), below the ephemeral range where one
    can be had: a process stopped and started again on its port (a RabbitMQ node, an API process
    in the rehearsal) must find it free, and a port of the ephemeral range may meanwhile be taken
    by any outgoing connection's local end (a RabbitMQ node failed to start again so)."""
    low = _ephemeral_ports()[0]
    for _ in range(50 if low - LOWEST_PORT > 1000 else 0):
        port = random.randrange(LOWEST_PORT, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class RabbitNode:
    """A rabbitmq-server of our own: its own node name, ports, database, logs and configuration
    under ``folder``. Stopped with SIGTERM to its Erlang VM (a clean shutdown, as ``rabbitmqctl
    stop`` does); started again on the same ports and database. ``RuntimeError`` when it does not
    come up."""

    def __init__(
        self, exe: str, folder: Path, name: str | None = None, cookie: str | None = None, config: str = ""
    ) -> None:
        self.exe, self.folder, self.config, self.cookie = exe, folder, config, cookie
        self.port, self.dist_port = free_port(), free_port()
        self.node = f"{name or f'shopcardd-test-{self.port}'}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        self.proc: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        base = self.folder
        env = {
            **os.environ,
            "HOME": str(base),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(base / "plugins-expand"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        }
        if self.cookie:  # the cluster's own cookie, never the machine's
            env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = f"-setcookie {self.cookie}"
        return env

    def launch(self) -> None:
        """Start the VM and return at once (``wait_up`` waits for it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "enabled_plugins").write_text("[].\n")
        (self.folder / "rabbitmq.conf").write_text(self.config)
        if os.geteuid() == 0:  # the rabbitmq-server script runs the broker as the rabbitmq user
            subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.folder)], check=False)
        with (self.folder / "server.out").open("ab") as log:
            self.proc = subprocess.Popen(
                [self.exe], env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_up(self, seconds: float = 90) -> None:
        """Until it takes an AMQP connection."""
        import pika

        from shopcardd_backend.queue.rabbitmq import node_parameters

        deadline = time.monotonic() + seconds
        while True:
            try:
                pika.BlockingConnection(node_parameters(self.url, connection_attempts=1)).close()
                return
            except pika.exceptions.AMQPError:
                if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                    log = self.folder / "server.out"
                    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                    raise RuntimeError(f"rabbitmq-server {self.node} did not start:\n{tail}") from None
                time.sleep(0.25)

    def start(self) -> None:
        """Start (or restart) and wait until it takes an AMQP connection."""
        self.launch()
        self.wait_up()

    def stop(self) -> None:
        """A clean shutdown; returns once the broker's VM has exited. A node still starting is
        waited for (its VM, started by ``su``, is not in our process group)."""
        pid_file = self.folder / "rabbitmq.pid"
        deadline = time.monotonic() + 30
        while not pid_file.exists() and self.proc is not None and self.proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if pid_file.exists() and pid_file.read_text().strip().isdigit():
            pid = int(pid_file.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # what is left of the group we started
            self.proc.wait(timeout=30)
            self.proc = None

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl`` against this node, with its cookie; a failing command raises."""
        ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
        cookie = ["--erlang-cookie", self.cookie] if self.cookie else []
        argv = [ctl, "-q", *cookie, "-n", self.node, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout


CLUSTER_CONFIG = """\
# A rehearsal's cluster: what docs/production.md asks of a production one.
cluster_partition_handling = pause_minority
queue_leader_locator = balanced
cluster_formation.peer_discovery_backend = classic_config
{nodes}
"""


class RabbitCluster:
    """Three (or ``size``) RabbitMQ nodes of our own that find each other at their first start
    (classic peer discovery), with an Erlang cookie of their own."""

    def __init__(self, exe: str, folder: Path, size: int = 3, prefix: str = "shopcardd-rehearsal") -> None:
        cookie = secrets.token_hex(16).upper()
        suffix = secrets.token_hex(3)
        names = [f"{prefix}-{suffix}-{n}" for n in range(1, size + 1)]
        listed = "\n".join(
            f"cluster_formation.classic_config.nodes.{n} = {name}@localhost"
            for n, name in enumerate(names, 1)
        )
        config = CLUSTER_CONFIG.format(nodes=listed)
        self.folder = folder
        self.nodes = [RabbitNode(exe, folder / name, name, cookie, config) for name in names]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # the broker runs as the rabbitmq user, which must reach its folders
            subprocess.run(["chown", "rabbitmq:rabbitmq", str(self.folder)], check=False)
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_up(180)
        deadline = time.monotonic() + 120
        while len(self.running_nodes()) < len(self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the RabbitMQ nodes did not form one cluster: {self.running_nodes()}")
            time.sleep(0.5)

    def running_nodes(self) -> list[str]:
        status = json.loads(self.nodes[0].ctl("cluster_status", "--formatter", "json"))
        return list(status.get("running_nodes", []))

    def leader_of(self, queue: str) -> RabbitNode:
        """The node that leads a quorum queue now."""
        for node in self.nodes:
            if node.proc is None:
                continue
            rows = json.loads(node.ctl("list_queues", "name", "leader", "--formatter", "json"))
            for row in rows:
                if row.get("name") == queue:
                    return next(n for n in self.nodes if n.node == row["leader"])
        raise RuntimeError(f"no running node knows the queue {queue}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def secantus(folder: Path) -> Iterator[str]:
    """SecantusDB (a MongoDB-compatible server) on a free port; its URI."""
    import pymongo

    port = free_port()
    exe = shutil.which("secantusd-py") or str(Path(sys.executable).with_name("secantusd-py"))
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "secantusd.log").open("wb") as log:
        proc = subprocess.Popen(
            [exe, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(folder / "mongo")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        deadline = time.monotonic() + 60
        while True:
            try:
                with pymongo.MongoClient(uri, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                    break
            except pymongo.errors.PyMongoError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"SecantusDB did not start; see {folder}") from None
                time.sleep(0.2)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Process:
    """A long-running command of ours (``shopcardd-backend serve``, ``relay``, ``worker ...``) that
    a bench starts, kills and starts again; its output appended to ``log``."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = list(argv), env, log
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def backend(cls, args: Sequence[str], env: dict[str, str], log: Path) -> Process:
        return cls([str(Path(sys.executable).with_name("shopcardd-backend")), *args], env, log)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def cpu_seconds(self) -> float:
        """CPU seconds it (and any process it started) has used so far; 0 when not running."""
        return total_cpu_seconds(process_tree(self.proc.pid)) if self.running and self.proc else 0.0

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to finish anything."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self, seconds: float = 60, check: bool = True) -> None:
        """SIGTERM, as systemd stops it, and wait (SIGKILL after ``seconds``); with ``check``,
        ``RuntimeError`` when it did not end cleanly (exit 0)."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        if check and status != 0:
            what = " ".join(self.argv[1:])
            raise RuntimeError(f"{what} did not stop cleanly (exit {status}); see {self.log}")
