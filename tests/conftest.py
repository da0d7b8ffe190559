"""Fixtures shared by every suite: the real services of the machine, found or started.

A test that needs Redis, RabbitMQ, MongoDB or a system library (libzbar) asks for the
fixture; where it is missing the test is skipped with the reason, except under ``CI=true``,
where it fails: CI machines have all of them and a silent skip would hide a broken setup.
Nothing here touches whatever database a developer's settings point to: every test builds
its own settings on temporary paths, its own Redis key prefix, its own database name.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import SpareRabbitMQ, SpareRedis, free_port, service_missing

REDIS_URL = os.environ.get("SHOPCARDD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("SHOPCARDD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


NEEDS: dict[str, str] = {
    "redis_url": "redis",
    "spare_redis": "redis",
    "amqp_url": "rabbitmq",
    "amqp_vhost": "rabbitmq",
    "spare_rabbitmq": "rabbitmq",
    "mongodb_uri": "mongo",
    "shop_network": "netns",
    "chromium": "chromium",
}
"""The marker of each fixture that needs a service or a system tool: a test that uses one (even
through another fixture, or ``request.getfixturevalue``) carries the marker, so ``-m`` selects
exactly (``make check`` runs the tests that need none of them)."""


@pytest.hookimpl(tryfirst=True)  # before -m selects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the fixtures it uses (``NEEDS``), then put the slow ones first: under
    xdist they start at once instead of finishing last, alone, on one worker."""
    for item in items:
        have = {mark.name for mark in item.iter_markers()}
        for name in sorted({NEEDS[f] for f in getattr(item, "fixturenames", ()) if f in NEEDS} - have):
            item.add_marker(name)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: modules stay together


def _release(package: str) -> tuple[int, int]:
    major, minor = importlib.metadata.version(package).split(".")[:2]
    return int(major), int(minor)


def pytest_configure(config: pytest.Config) -> None:
    """pytest 9.2 keeps node ids in a new way, and pytest-xdist 3.8's ``--dist loadgroup`` still
    writes the group into the old one (pytest-xdist#1386): every xdist_group is then dropped
    without a word and split over the workers, each running the group's expensive fixture (the
    arm64 root provisioned four times at once). Refuse that pair of versions instead."""
    if (
        config.getoption("dist", "no") == "loadgroup"
        and _release("pytest") >= (9, 2)
        and _release("pytest-xdist") <= (3, 8)
    ):
        raise pytest.UsageError(
            "pytest 9.2 with pytest-xdist 3.8 ignores xdist_group (pytest-xdist#1386): "
            "install the versions pyproject.toml pins (make .venv/.installed-stamp)"
        )


@pytest.fixture(autouse=True)
def _marked_for_what_it_used(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that reached a service its markers do not name (a fixture asked for at run time,
    a parameter that opens Redis): ``-m 'not redis'`` would run it on a machine without Redis."""
    yield
    used = {NEEDS[name] for name in request.fixturenames if name in NEEDS}
    missing = used - {mark.name for mark in request.node.iter_markers()}
    if missing:
        pytest.fail(
            f"{request.node.nodeid} uses {', '.join(sorted(missing))} but is not marked so: add "
            f"pytest.mark.{sorted(missing)[0]} to the test or to the parameter that needs it",
            pytrace=False,
        )


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def libzbar() -> None:
    """pyzbar's system library (Debian's libzbar0), which ``make test`` installs where it can."""
    import ctypes.util

    if ctypes.util.find_library("zbar") is None:  # how pyzbar itself looks for it
        service_missing("libzbar0 is not installed (pyzbar needs it): run sudo apt-get install libzbar0")


CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromedriver")


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Debian's Chromium and its WebDriver (``make test`` installs them): the browser the console's
    tests drive. Never one downloaded at run time."""
    missing = [path for path in CHROMIUM if not Path(path).exists()]
    if missing:
        service_missing(f"{', '.join(missing)} missing: run sudo apt-get install chromium chromium-driver")
    return CHROMIUM


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The machine's Redis (127.0.0.1:6379), checked with a PING."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_missing(f"Redis is not reachable at {REDIS_URL}: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses, so tests never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The machine's RabbitMQ (127.0.0.1:5672, guest/guest), checked with a connection."""
    import pika

    try:
        params = pika.URLParameters(AMQP_URL + "?connection_attempts=1&socket_timeout=2")
        pika.BlockingConnection(params).close()
    except pika.exceptions.AMQPError as exc:
        service_missing(f"RabbitMQ is not reachable at {AMQP_URL}: {exc!r}")
    return AMQP_URL


class Vhosts:
    """RabbitMQ virtual hosts for the queue tests, each used by one test only, made ``BATCH`` at a
    time and deleted together when the session ends: every ``rabbitmqctl`` call boots an Erlang VM
    (about a second), and three calls per test (add, permissions, delete) made the queue suites
    mostly waiting. Where ``rabbitmqctl eval`` cannot do it (another broker version's internals),
    each vhost is made and deleted with the plain commands instead."""

    BATCH = 8
    ACTOR = "shopcardd-tests"

    def __init__(self, ctl: str, user: str) -> None:
        self.ctl, self.user = ctl, user
        self.ready: list[str] = []
        self.made: list[str] = []
        self.batched = True

    def _run(self, *args: str) -> None:
        subprocess.run([self.ctl, "-q", *args], check=True, capture_output=True, timeout=120)

    def _eval(self, names: list[str], action: str) -> None:
        listed = ", ".join(f'<<"{name}">>' for name in names)
        self._run("eval", f"[begin {action} end || V <- [{listed}]], ok.")

    def take(self) -> str:
        """A vhost no test has used, with every permission for the test user."""
        if not self.ready:
            names = [f"test-{uuid.uuid4().hex[:12]}" for _ in range(self.BATCH if self.batched else 1)]
            actor = f'<<"{self.ACTOR}">>'
            try:
                self._eval(
                    names,
                    f"ok = rabbit_vhost:add(V, {actor}), ok = rabbit_auth_backend_internal:set_permissions("
                    f'<<"{self.user}">>, V, <<".*">>, <<".*">>, <<".*">>, {actor})',
                )
            except subprocess.CalledProcessError:
                self.batched, names = False, names[:1]
                self._run("add_vhost", names[0])
                self._run("set_permissions", "-p", names[0], self.user, ".*", ".*", ".*")
            self.made += names
            self.ready += names
        return self.ready.pop()

    def delete_all(self) -> None:
        if self.made and self.batched:
            self._eval(self.made, f'rabbit_vhost:delete(V, <<"{self.ACTOR}">>)')
        else:
            for name in self.made:
                self._run("delete_vhost", name)
        self.made, self.ready = [], []


@pytest.fixture(scope="session")
def _vhosts() -> Iterator[Vhosts | None]:
    ctl = shutil.which("rabbitmqctl")
    vhosts = Vhosts(ctl, urllib.parse.urlsplit(AMQP_URL).username or "guest") if ctl else None
    yield vhosts
    if vhosts is not None:
        vhosts.delete_all()


@pytest.fixture
def amqp_vhost(amqp_url: str, _vhosts: Vhosts | None) -> str:
    """The URL of a RabbitMQ virtual host of this test's own (made with ``rabbitmqctl``; deleted
    when the session ends): the topology's names are fixed (docs/architecture.md), so tests keep
    apart by vhost."""
    if _vhosts is None:
        service_missing("rabbitmqctl is not installed; it makes each queue test its own vhost")
    try:
        vhost = _vhosts.take()
    except (subprocess.SubprocessError, OSError) as exc:
        service_missing(f"cannot make a RabbitMQ vhost with rabbitmqctl: {exc}")
    return AMQP_URL.rsplit("/", 1)[0] + "/" + vhost


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB server: ``SHOPCARDD_MONGODB_URI`` when set, else SecantusDB started here.

    SecantusDB speaks the real wire protocol, so pymongo cannot tell it from ``mongod``.
    """
    given = os.environ.get("SHOPCARDD_MONGODB_URI")
    if given:
        yield given
        return
    exe = shutil.which("secantusd-py") or str(Path(sys.executable).with_name("secantusd-py"))
    if not Path(exe).exists():
        service_missing("SecantusDB (secantusd-py) is not installed; `make test` installs it")
    port = free_port()
    storage = tmp_path_factory.mktemp("secantus")
    log = (storage.parent / "secantusd.log").open("wb")
    proc = subprocess.Popen(
        [exe, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage / "db")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not _port_open("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                service_missing(f"SecantusDB did not start; see {log.name}")
            time.sleep(0.1)
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def mongodb_database_name() -> str:
    """A database name of this test's own, so a real server's data is never touched."""
    return f"shopcardd_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def spare_redis(tmp_path: Path) -> Iterator[SpareRedis]:
    """A Redis this test owns (``SpareRedis``), started; killed when the test ends."""
    exe = shutil.which("redis-server")
    if exe is None:
        service_missing("redis-server is not installed (apt-get install redis-server)")
    server = SpareRedis(str(exe), free_port(), tmp_path / "spare-redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def spare_rabbitmq() -> Iterator[SpareRabbitMQ]:
    """A RabbitMQ this test owns (``SpareRabbitMQ``), started; stopped when the test ends."""
    exe = shutil.which("rabbitmq-server")
    if exe is None:
        service_missing("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    # Not under tmp_path: pytest keeps that 0700, and the broker runs as the rabbitmq user.
    folder = Path(tempfile.mkdtemp(prefix="shopcardd-test-rabbitmq-"))
    server = SpareRabbitMQ(exe, folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def unused_port() -> int:
    """A TCP port on loopback that nobody listens on."""
    return free_port()
