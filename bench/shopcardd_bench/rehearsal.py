"""A dress rehearsal of a sale: the production topology (docs/production.md) on loopback, a flash
sale through it while parts fail, and whether anything was lost.

It stands up, each piece on free ports of its own and never the machine's Redis or RabbitMQ:
nginx with the repository's site and a certificate from ``shopcardd-provision tls`` (HTTP/2 to
the customers), --api API processes behind it, a Redis Cluster of 3 primaries and 3 replicas,
RabbitMQ as a 3-node cluster with quorum queues, SecantusDB as MongoDB, 2 relays, a persist,
notify and analytics worker, a mail and an SMS sink, and a shop of 3 counters enrolled through
nginx over https, the shop LAN on, synced every --sync-every seconds.

For --seconds, customers claim through nginx as fast as the machine answers (most once, some
again with the same key; one hot deal spread over buckets) while the counters scan vouchers as
they are brought. Faults, on a schedule printed at the start: a Redis primary killed (its replica
takes over); one API process, one relay and the persist worker killed and started again; the
RabbitMQ node leading the persist queue stopped and started again; one counter cut off the
backend and the LAN, with two vouchers redeemed on purpose at it and at another counter; and a
voucher redeemed at one counter brought to the next, which the shop LAN must refuse.

Then each invariant is one line with its figure, `N passed, M failed`, exit 1 on any failure;
report.md and timeline.png in --report (default: a new folder in the system's temp folder).
Ctrl-C stops everything it started (exit 130).
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
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shopcardd_commands.commandline import whole_number

from .rehearsal_checks import Checks, check_everything
from .rehearsal_report import Timeline, write_report
from .services import Process, RabbitCluster, free_port, secantus

MERCHANT = "m-rehearsal"
JOBS = ("persist", "notify", "analytics")
RESTART_AFTER = 3.0
"""Seconds a killed API process, relay or worker stays down before it is started again."""


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds from 0.1 to 3600."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} must be from 0.1 to 3600 seconds")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=whole_number(10), default=60, help="length of the sale (default 60)"
    )
    parser.add_argument(
        "--api", type=whole_number(2, 64), default=2, help="API processes behind nginx (default 2)"
    )
    parser.add_argument(
        "--in-flight", type=whole_number(1, 2000), default=24, help="claims in flight at once (default 24)"
    )
    parser.add_argument(
        "--connections", type=whole_number(1, 200), default=4, help="HTTP/2 connections to nginx (default 4)"
    )
    parser.add_argument(
        "--hot-stock", type=whole_number(1), default=500, help="stock of the hot deal (default 500)"
    )
    parser.add_argument(
        "--buckets", type=whole_number(1, 256), default=6, help="buckets of each deal (default 6)"
    )
    parser.add_argument(
        "--sync-every", type=_seconds, default=20.0, help="seconds between a counter's syncs (default 20)"
    )
    parser.add_argument(
        "--scan-every", type=_seconds, default=0.5, help="seconds between scans at the shop (default 0.5)"
    )
    parser.add_argument(
        "--latency-goal-ms", type=float, default=50.0, help="the claim p99 goal through nginx (default 50)"
    )
    parser.add_argument(
        "--report", type=Path, default=None, metavar="DIR", help="where report.md and timeline.png go"
    )


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


def _backend_env(settings: dict[str, str]) -> dict[str, str]:
    """This environment without any SHOPCARDD_ variable of the operator's, and the run's settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHOPCARDD_")}
    return {**base, **settings}


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
            "SHOPCARDD_REDIS_URL": redis.url,
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
        for port in api_ports:
            api = Process.backend(
                ["serve", "--host", "127.0.0.1", "--port", str(port)], env, logs / f"api-{port}.log"
            )
            api.start()
            stack.callback(api.stop, check=False)
            _wait_http(f"http://127.0.0.1:{port}/healthz", None, f"API process on port {port}", api)
            apis.append(api)  # one after the other: the first makes the signing key the others use
        server = Nginx(nginx, work / "nginx", site_for(api_ports, None, https_port, work / "tls"))
        server.start()
        stack.callback(server.stop)
        _wait_http(f"{url}/healthz", ca, "nginx")
        rabbit_up.join()
        if rabbit_failed:
            raise RuntimeError(f"RabbitMQ: {rabbit_failed[0]}")
        print("  RabbitMQ: 3 nodes, quorum queues; 2 relays and the persist, notify and analytics workers")
        urls = rabbit.urls
        relays = [
            Process.backend(["relay"], {**env, "SHOPCARDD_AMQP_URL": urls[n % 3]}, logs / f"relay-{n}.log")
            for n in range(2)
        ]
        workers = {
            job: Process.backend(
                ["worker", job], {**env, "SHOPCARDD_AMQP_URL": urls[(n + 2) % 3]}, logs / f"{job}.log"
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


def _restart_later(top: Topology, process: Process, what: str) -> None:
    process.kill()
    top.mark(f"SIGKILL {what}")

    def again() -> None:
        time.sleep(RESTART_AFTER)
        process.start()
        top.mark(f"started {what} again")

    threading.Thread(target=again, daemon=True).start()


@dataclass
class Fault:
    at: float
    what: str
    act: Callable[[], None]


def schedule(
    top: Topology,
    shop: Any,
    hot_deal: str,
    seconds: int,
    doubles: Callable[[], None],
    doubles_done: threading.Event,
    lan_probe: Callable[[], None],
) -> list[Fault]:
    """The faults of a sale of ``seconds``, in order."""
    from shopcardd_backend.gates.redis import bucket_tag

    def kill_redis_primary() -> None:
        slot = int(top.redis.cli(next(iter(top.redis.nodes)), "CLUSTER", "KEYSLOT", bucket_tag(hot_deal, 0)))
        port = top.redis.port_of_slot(slot)
        top.redis.nodes[port].kill()
        top.mark(f"SIGKILL Redis primary :{port} (the hot deal's bucket 0); its replica takes over")

    def stop_persist_leader() -> None:
        leader = top.rabbit.leader_of("shopcardd.persist")
        top.mark(f"stop RabbitMQ node {leader.node} (leads shopcardd.persist)")
        leader.stop()

        def again() -> None:
            time.sleep(max(2.0, seconds * 0.1))
            leader.start()
            top.mark(f"RabbitMQ node {leader.node} started again")

        threading.Thread(target=again, daemon=True).start()

    cut = shop.counters[-1]
    return [
        Fault(0.12 * seconds, "SIGKILL a Redis primary", kill_redis_primary),
        Fault(0.16 * seconds, "a voucher redeemed at one counter is brought to the next", lan_probe),
        Fault(
            0.22 * seconds,
            "SIGKILL an API process, start it again",
            lambda: _restart_later(top, top.apis[0], "API process 1"),
        ),
        Fault(
            0.30 * seconds,
            f"cut counter {cut.name} off the backend and the LAN",
            lambda: (shop.cut(cut), top.mark(f"cut {cut.name} off")),
        ),
        Fault(
            0.36 * seconds,
            "SIGKILL a relay, start it again",
            lambda: _restart_later(top, top.relays[0], "relay 1"),
        ),
        Fault(0.42 * seconds, "redeem two vouchers at two counters during the cut", doubles),
        Fault(
            0.48 * seconds,
            "SIGKILL the persist worker, start it again",
            lambda: _restart_later(top, top.workers["persist"], "persist worker"),
        ),
        Fault(
            0.56 * seconds,
            "stop the RabbitMQ node leading shopcardd.persist, start it again",
            stop_persist_leader,
        ),
        Fault(
            0.66 * seconds,
            f"reconnect counter {cut.name}",
            lambda: (doubles_done.wait(120), shop.heal(cut), top.mark(f"{cut.name} back on")),
        ),
    ]


def run(args: argparse.Namespace) -> int:
    folder = args.report or Path(tempfile.mkdtemp(prefix="shopcardd-rehearsal-report-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _rehearse(args, folder)
    except KeyboardInterrupt:
        print("\ninterrupted: everything the rehearsal started is stopped", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"shopcardd-bench rehearsal: {exc}", file=sys.stderr)
        return 1


def _rehearse(args: argparse.Namespace, folder: Path) -> int:
    import httpx
    import jwt

    from .pipeline import Answers
    from .shop import Shop

    print(f"rehearsal: standing up the production topology on loopback (files in {folder})", flush=True)
    with topology(args, folder) as top, ExitStack() as stack:
        backend = str(Path(sys.executable).with_name("shopcardd-backend"))
        made = subprocess.run(
            [backend, "merchant", "create", "--merchant", MERCHANT],
            env=top.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        top.api_key = made.stdout.splitlines()[-1].strip()
        client = stack.enter_context(httpx.Client(base_url=top.url, verify=str(top.ca), timeout=30))
        deals = {}
        for name, stock in [("hot", args.hot_stock), ("everyday", 1_000_000)]:
            answer = client.post(
                "/v1/deals",
                headers={"X-API-Key": top.api_key},
                json={
                    "title": f"Rehearsal {name} deal",
                    "stock": stock,
                    "per_user_limit": 1,
                    "voucher_ttl_seconds": 86_400,
                },
            )
            answer.raise_for_status()
            deals[name] = answer.json()
        print("  the shop: 3 counters enrolled through nginx over https, LAN on", flush=True)
        shop = Shop(top.work / "shop", top.url, top.ca, top.api_key, MERCHANT, folder / "logs")
        shop.start(args.sync_every)
        stack.callback(shop.close)

        env = top.env
        secret, issuer, audience = (
            env["SHOPCARDD_USER_SECRET"],
            env["SHOPCARDD_USER_ISSUER"],
            env["SHOPCARDD_USER_AUDIENCE"],
        )

        def token_for(number: int) -> str:
            now = int(time.time())
            contact = (
                {"email": f"u{number}@rehearsal.test"}
                if number % 2 == 0
                else {"phone_number": f"+4470{number:08d}"}
            )
            claims = {
                "iss": issuer,
                "sub": f"u{number}",
                "aud": audience,
                "iat": now,
                "exp": now + 3600,
                **contact,
            }
            return jwt.encode(claims, secret, algorithm="HS256")

        from .sale import Claim, Sale

        answers = Answers()
        to_scan: list[str] = []
        scan_lock = threading.Lock()

        def on_voucher(claim: Claim) -> None:
            answers.add(claim.voucher_id or "")
            with scan_lock:
                if len(to_scan) < 10_000:
                    to_scan.append(claim.token or "")

        sale = Sale(
            top.url,
            str(top.ca),
            [deals["hot"]["deal_id"], deals["everyday"]["deal_id"]],
            token_for,
            args.in_flight,
            args.connections,
            on_voucher,
        )
        doubled: list[str] = []

        def take_voucher() -> str | None:
            with scan_lock:
                return to_scan.pop() if to_scan else None

        doubles_done = threading.Event()

        def doubles() -> None:
            """Two vouchers each redeemed at the cut counter and at another: the conflicts made on
            purpose. The cut lasts until both are done (``heal`` waits for this)."""
            cut, other = shop.counters[-1], shop.counters[0]
            try:
                for _ in range(2):
                    token = take_voucher()
                    if token is None:
                        top.mark("no voucher to redeem twice yet")
                        return
                    cut.scan(token)
                    other.scan(token)
                    doubled.append(jwt.decode(token, options={"verify_signature": False})["jti"])
                top.mark(f"redeemed 2 vouchers at {cut.name} (cut off) and at {other.name}")
            finally:
                doubles_done.set()

        lan_probed: list[str] = []

        def lan_probe() -> None:
            """A voucher redeemed at one till, then brought to the next: the LAN told it."""
            first, second = shop.counters[0], shop.counters[1]
            token = take_voucher()
            if token is None:
                top.mark("no voucher for the LAN probe yet")
                return
            first.scan(token)
            time.sleep(3.0)  # the customer walks to the next till
            second.scan(token)
            lan_probed.append(jwt.decode(token, options={"verify_signature": False})["jti"])
            top.mark(f"a voucher redeemed at {first.name} brought to {second.name}")

        faults = schedule(top, shop, deals["hot"]["deal_id"], args.seconds, doubles, doubles_done, lan_probe)
        print("\nfault schedule:")
        for fault in faults:
            print(f"  t+{fault.at:5.1f} s  {fault.what}")
        print(flush=True)
        timeline = Timeline(top, sale.tally, answers)
        stack.callback(timeline.stop)
        timeline.start()
        started = time.monotonic()
        top.mark("sale open")
        sale.start()
        shop.serve(take_voucher, args.scan_every)
        pending = list(faults)
        while (elapsed := time.monotonic() - started) < args.seconds:
            while pending and pending[0].at <= elapsed:
                fault = pending.pop(0)
                threading.Thread(target=fault.act, daemon=True).start()
            timeline.progress(elapsed, args.seconds)
            time.sleep(0.05)
        for fault in pending:
            fault.act()
        sale.join()
        top.mark("sale closed; the shop syncs once more, the pipeline drains")
        shop.close()  # its last syncs; the timeline keeps sampling through the drain
        checks = Checks()
        check_everything(
            checks, top, client, deals, sale.tally, answers, shop, doubled, lan_probed, timeline, args
        )
        timeline.stop()
        print()
        for line in checks.lines:
            print(line)
        failed = sum(not ok for ok, _ in checks.results)
        passed = len(checks.results) - failed
        print(f"\n{passed} passed, {failed} failed")
        write_report(folder, checks, top, timeline, faults, args, passed, failed)
        print(f"report: {folder / 'report.md'} and {folder / 'timeline.png'}")
        return 1 if failed else 0
