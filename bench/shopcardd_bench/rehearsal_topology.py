"""The rehearsal's topology stood up on loopback and stopped again whatever happens: TLS, a Redis
Cluster, SecantusDB, the mail and SMS sinks, the API processes behind nginx, a 3-node RabbitMQ,
the relays and the workers; and what of it the faults and the checks reach for (``Topology``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .services import Process, RabbitCluster, free_port, secantus

JOBS = ("persist", "notify", "analytics")
JOB_ENV = {"notify": {"SHOPCARDD_LOG_LEVEL": "INFO"}}
"""The notify worker logs each notice sent: a voucher whose customer was not told has a trail."""


@dataclass
class Topology:
    """What runs, and what the faults and the checks reach for."""

    folder: Path
    work: Path
    url: str
    ca: Path
    env: dict[str, str]
    redis: Any
    rabbit: RabbitCluster
    mongodb_uri: str
    apis: list[Process]
    relays: list[Process]
    workers: dict[str, Process]
    sinks: dict[str, Any]
    api_key: str = ""
    marks: list[tuple[float, str]] = field(default_factory=list)
    phase: str = "starting"

    def mark(self, what: str) -> None:
        self.marks.append((time.time(), what))
        self.phase = what
        print(f"  [{time.strftime('%H:%M:%S')}] {what}", flush=True)


def _wait_http(
    url: str, ca: Path | None, what: str, proc: Process | None = None, seconds: float = 90
) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        if proc is not None and not proc.running:
            raise RuntimeError(f"{what} exited; see {proc.log}")
        try:
            if httpx.get(url, timeout=2, verify=str(ca) if ca else True).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {seconds:g} s")
        time.sleep(0.2)


def _keep_log(log: Path, kept: Path) -> None:
    if log.exists():
        shutil.copyfile(log, kept)


def _backend_env(settings: dict[str, str]) -> dict[str, str]:
    """This environment without any SHOPCARDD_ variable of the operator's, and the run's settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHOPCARDD_")}
    return {**base, **settings}


def _every_node(urls: list[str], first: int) -> str:
    """``SHOPCARDD_AMQP_URL`` naming every node, starting at node ``first`` (modulo their number):
    the processes spread over the nodes, and each reconnects to another when its own stops."""
    first %= len(urls)
    return ",".join(urls[first:] + urls[:first])


@contextlib.contextmanager
def topology(args: argparse.Namespace, folder: Path) -> Iterator[Topology]:
    """Everything stood up, and stopped again whatever happens."""
    from .nginx import Nginx, nginx_exe, site_for
    from .rediscluster import running_cluster
    from .sinks import MailSink, SmsSink

    for tool in ("redis-server", "redis-cli", "rabbitmq-server"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            raise RuntimeError(
                f"{tool} is not installed (Debian: apt-get install redis-server rabbitmq-server)"
            )
    nginx = nginx_exe()
    if nginx is None:
        raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="shopcardd-rehearsal-"))
        stack.callback(shutil.rmtree, work, True)
        rabbit_exe = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"
        # Its own temporary folder: the broker runs as the rabbitmq user, which must reach it.
        rabbit_folder = Path(tempfile.mkdtemp(prefix="shopcardd-rehearsal-rabbitmq-"))
        stack.callback(shutil.rmtree, rabbit_folder, True)
        rabbit = RabbitCluster(rabbit_exe, rabbit_folder)
        stack.callback(rabbit.stop)
        rabbit_failed: list[BaseException] = []

        def start_rabbit() -> None:
            try:
                rabbit.start()
            except BaseException as exc:  # told in the main thread
                rabbit_failed.append(exc)

        rabbit_up = threading.Thread(target=start_rabbit, daemon=True)  # the slowest: under way meanwhile
        rabbit_up.start()
        stack.callback(rabbit_up.join)  # before rabbit.stop: a node half started is stopped too
        print("  TLS: shopcardd-provision tls --host localhost", flush=True)
        subprocess.run(
            [
                str(Path(sys.executable).with_name("shopcardd-provision")),
                "tls",
                "--out",
                str(work / "tls"),
                "--host",
                "localhost",
                "--host",
                "127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        ca = work / "tls" / "ca.pem"
        (work / "redis").mkdir()
        print("  Redis Cluster: 3 primaries, 3 replicas", flush=True)
        redis = stack.enter_context(running_cluster(work / "redis", 3, 1, node_timeout_ms=3000))
        print("  SecantusDB as MongoDB", flush=True)
        mongodb_uri = stack.enter_context(secantus(work / "mongo"))
        mail, sms = MailSink(free_port()), SmsSink()
        for sink in (mail, sms):
            sink.start()
            stack.callback(sink.stop)
        https_port = free_port()
        url = f"https://localhost:{https_port}"
        settings = {
            "SHOPCARDD_ENVIRONMENT": "production",
            "SHOPCARDD_DATA_DIR": str(work / "backend"),
            # Every primary: an API process, relay or worker started again while one is down
            # (the rehearsal kills one) starts from another.
            "SHOPCARDD_REDIS_URL": ",".join(redis.primary_urls()),
            "SHOPCARDD_REDIS_CLUSTER": "true",
            "SHOPCARDD_REDIS_DEAL_BUCKETS": str(args.buckets),
            "SHOPCARDD_MONGODB_URI": mongodb_uri,
            "SHOPCARDD_MONGODB_DATABASE": "shopcardd",
            "SHOPCARDD_MONGODB_READ_PREFERENCE": "secondaryPreferred",
            "SHOPCARDD_SMTP_URL": mail.url,
            "SHOPCARDD_MAIL_FROM": "ShopCardd <vouchers@rehearsal.test>",
            "SHOPCARDD_SMS_URL": sms.url,
            "SHOPCARDD_SMS_API_KEY": secrets.token_urlsafe(24),
            "SHOPCARDD_USER_ISSUER": "rehearsal-idp",
            "SHOPCARDD_USER_SECRET": secrets.token_urlsafe(48),
            "SHOPCARDD_USER_AUDIENCE": "shopcardd-rehearsal",
            "SHOPCARDD_DEVICE_AUDIENCE": url,  # nginx passes Host without the port
            # One load generator stands for thousands of phones behind one address.
            "SHOPCARDD_CLAIM_RATE_PER_ADDRESS": "0",
            "SHOPCARDD_LOG_LEVEL": "WARNING",
        }
        env = _backend_env(settings)
        logs = folder / "logs"
        shutil.rmtree(logs, ignore_errors=True)  # a report folder used again holds this run's only
        logs.mkdir()
        print(f"  {args.api} API processes behind nginx (https, HTTP/2) at {url}", flush=True)
        api_ports = [free_port() for _ in range(args.api)]
        apis = []
        for n, port in enumerate(api_ports):
            # As in production, an API process names the broker: it only claims, and leaves the
            # outbox to the relays (without it, each would run every job's handler itself).
            api = Process.backend(
                ["serve", "--host", "127.0.0.1", "--port", str(port)],
                {**env, "SHOPCARDD_AMQP_URL": _every_node(rabbit.urls, n)},
                logs / f"api-{port}.log",
            )
            api.start()
            stack.callback(api.stop, check=False)
            _wait_http(f"http://127.0.0.1:{port}/healthz", None, f"API process on port {port}", api)
            apis.append(api)  # one after the other: the first makes the signing key the others use
        server = Nginx(nginx, work / "nginx", site_for(api_ports, None, https_port, work / "tls"))
        # Kept once nginx has stopped: its error log says why a customer got a 502.
        stack.callback(_keep_log, work / "nginx" / "error.log", logs / "nginx-error.log")
        server.start()
        stack.callback(server.stop)
        _wait_http(f"{url}/healthz", ca, "nginx")
        rabbit_up.join()
        if rabbit_failed:
            raise RuntimeError(f"RabbitMQ: {rabbit_failed[0]}")
        print("  RabbitMQ: 3 nodes, quorum queues; 2 relays and the persist, notify and analytics workers")
        urls = rabbit.urls
        relays = [
            Process.backend(
                ["relay"], {**env, "SHOPCARDD_AMQP_URL": _every_node(urls, n)}, logs / f"relay-{n}.log"
            )
            for n in range(2)
        ]
        workers = {
            job: Process.backend(
                ["worker", job],
                {**env, "SHOPCARDD_AMQP_URL": _every_node(urls, n + 2), **JOB_ENV.get(job, {})},
                logs / f"{job}.log",
            )
            for n, job in enumerate(JOBS)
        }
        for process in [*relays, *workers.values()]:
            process.start()
            stack.callback(process.stop, check=False)
        top = Topology(
            folder,
            work,
            url,
            ca,
            env,
            redis,
            rabbit,
            mongodb_uri,
            apis,
            relays,
            workers,
            {"email": mail, "sms": sms},
        )
        yield top
