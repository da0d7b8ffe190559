"""The claim pipeline end to end: claims through the Redis gate, relay, RabbitMQ, the three workers.

A soak, then a measure of each stage's capacity:

1. Soak: --claims claims (default 100,000) are made through the claim service (the API's own
   use case, without HTTP: Redis claim step, signature) from several threads, while one relay
   and the persist, notify and analytics workers run as processes of their own. Halfway, the
   persist worker is killed with SIGKILL and started again. The end-to-end lag (claim answered
   -> voucher document stored) is read from a probe every 50 ms: how many of the claims
   answered, from the first, have their voucher stored (looked up by id; the stages keep order
   closely, not exactly).
2. Capacity: every stage is stopped, --backlog more claims wait in the outbox; then the relay
   alone drains them (relay events/s, and per second of its own CPU), then the persist worker
   alone stores them (persist documents/s, and per CPU second; nothing else writing to the
   store), then the same documents are written with a bare ``insert_many`` in batches of the
   worker's size to another collection of the same server: the ratio of the two, in the same
   run, is the worker's own overhead.
3. Checks (notify and analytics started again to take their share of the backlog): the store
   holds exactly the vouchers issued, each once; the deal's statistics count them all;
   the outbox is empty; nothing was parked.

With --rates R1,R2,... it runs sales instead of the soak and the capacity measures: after a
warm-up second, a sale of --seconds at each rate, the claims made on a schedule, every stage
running, each waited out until its last voucher is stored; then the same checks. It prints,
per rate, the lag (p50, p99, max), how long the store took to catch up after the sale, the
relay's events and the persist worker's documents per second of their own CPU, the highest
rate whose lag p99 is within 5 s, and plots the lag against the rate (--plot); and the CPU
each stage took per claim (this bench's claims, the relay, the workers, and Redis, RabbitMQ and
the store when they run on this machine), with the claims/s all of them together could carry
on its cores.

Services: Redis (--redis-url), RabbitMQ (--amqp-url; a virtual host of its own is made with
rabbitmqctl when it can be, and removed after), MongoDB (--mongodb-uri, else a SecantusDB
started here on a free port). Every key, queue and database is the bench's own.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from shopcardd_commands.commandline import whole_number

from .figures import percentile
from .pipeline_cpu import stage_meters
from .pipeline_lag import Answers, Sampler, StoredProbe, store_lags
from .pipeline_report import SaleLag, print_sales, write_lag_plot
from .services import Process, secantus

DEFAULT_REDIS_URL = os.environ.get("SHOPCARDD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEFAULT_AMQP_URL = os.environ.get("SHOPCARDD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
JOBS = ("persist", "notify", "analytics")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--claims", type=whole_number(1), default=100_000, help="claims of the soak (default 100000)"
    )
    parser.add_argument(
        "--backlog",
        type=whole_number(1),
        default=20_000,
        help="claims left waiting for the capacity measures (default 20000)",
    )
    parser.add_argument("--threads", type=whole_number(1, 64), default=8, help="claiming threads (default 8)")
    parser.add_argument(
        "--rates",
        type=rate_list,
        default=None,
        metavar="R1,R2,...",
        help="instead of the soak and the capacity measures: one sale of --seconds at each of these "
        "claim rates (claims/s on a schedule), the lag of each (claim answered -> stored), and a "
        "plot of the lag against the rate (--plot)",
    )
    parser.add_argument(
        "--seconds", type=whole_number(1), default=60, help="length of each sale of --rates (default 60)"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path("pipeline-lag.png"),
        help="the PNG of --rates (default pipeline-lag.png)",
    )
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="the Redis of the claim gate")
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL, help="the RabbitMQ (a vhost is made in it)")
    parser.add_argument(
        "--mongodb-uri", default=None, help="the MongoDB (default: a SecantusDB started here)"
    )


def rate_list(text: str) -> list[int]:
    """``500,1000,2000``: claim rates, each a whole number of claims per second above 0."""
    try:
        rates = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give claims/s as whole numbers, comma-separated"
        ) from None
    if not rates or min(rates) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every rate must be 1 claim/s or more")
    return rates


@contextmanager
def rabbitmq_vhost(amqp_url: str) -> Iterator[str]:
    """A RabbitMQ virtual host of the bench's own, when rabbitmqctl can make one."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        print("note: rabbitmqctl not found; using the URL's own vhost")
        yield amqp_url
        return
    vhost = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run([ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True)
    try:
        yield amqp_url.rsplit("/", 1)[0] + "/" + vhost
    finally:
        subprocess.run([ctl, "-q", "delete_vhost", vhost], check=False, capture_output=True)


@contextmanager
def _mongodb(given: str | None, folder: Path) -> Iterator[str]:
    """The MongoDB given, else a SecantusDB started here."""
    if given:
        yield given
        return
    with secantus(folder) as uri:
        yield uri


def _until(condition: Any, what: str, seconds: float, progress: Any = None, every: float = 0.05) -> float:
    """Wait for ``condition`` (polled ``every`` seconds); the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise RuntimeError(f"{what}: not within {seconds:g} s")
        if progress is not None:
            progress()
        time.sleep(every)
    return time.monotonic() - started


def _claim_all(
    runtime: Any,
    deal_id: str,
    count: int,
    threads: int,
    start: int,
    bar: Any,
    answers: Answers,
    rate: float = 0,
) -> None:
    """``count`` claims by distinct users, each noted in ``answers`` as it is answered; with
    ``rate``, the n-th claim is made no sooner than n / rate seconds after the first (as fast as
    the threads go when they fall behind)."""
    began = time.monotonic()

    def one(n: int) -> None:
        if rate:
            time.sleep(max(0.0, began + n / rate - time.monotonic()))
        result = runtime.claims.claim_as(deal_id, f"user{start + n}", "k")
        assert result.voucher is not None, f"claim {n}: {result.outcome}"
        answers.add(result.voucher.voucher_id)
        bar.update(1)

    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(one, range(count)):
            pass


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shopcardd-pipeline-")))
        amqp_url = stack.enter_context(rabbitmq_vhost(args.amqp_url))
        mongodb_uri = stack.enter_context(_mongodb(args.mongodb_uri, folder))
        run_id = uuid.uuid4().hex[:8]
        env = {
            **os.environ,
            "SHOPCARDD_DATA_DIR": str(folder / "data"),
            "SHOPCARDD_REDIS_URL": args.redis_url,
            "SHOPCARDD_REDIS_PREFIX": f"bench-{run_id}",
            "SHOPCARDD_AMQP_URL": amqp_url,
            "SHOPCARDD_MONGODB_URI": mongodb_uri,
            "SHOPCARDD_MONGODB_DATABASE": f"bench_{run_id}",
            "SHOPCARDD_LOG_LEVEL": "WARNING",
        }
        # A bar on a terminal; in a log, no bar (its redrawn line is carriage returns there): the
        # phases' own lines say where the run is.
        return _measure(args, env, folder, stack, functools.partial(tqdm, disable=None))


def _measure(args: argparse.Namespace, env: dict[str, str], folder: Path, stack: ExitStack, tqdm: Any) -> int:
    import pymongo

    from shopcardd_backend.runtime import Runtime
    from shopcardd_backend.settings import Settings

    saved = os.environ.copy()
    os.environ.update(env)
    try:
        settings = Settings.from_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    runtime = stack.enter_context(Runtime(settings))
    client = stack.enter_context(pymongo.MongoClient(settings.mongodb_uri))
    vouchers = client[settings.mongodb_database]["vouchers"]
    if args.rates:  # the sales and the warm-up's second
        total = sum(rate * args.seconds for rate in args.rates) + args.rates[0]
    else:
        total = args.claims + args.backlog
    deal = runtime.deals.create(
        "bench",
        title="pipeline bench",
        stock=total,
        per_user_limit=1,
        voucher_ttl_seconds=86_400,
        starts_at=None,
        ends_at=None,
    ).deal
    stages = {name: Process.backend(["worker", name], env, folder / f"{name}.log") for name in JOBS}
    stages["relay"] = Process.backend(["relay"], env, folder / "relay.log")
    for stage in stages.values():
        stage.start()
        stack.callback(stage.stop)
    if args.rates:
        meters = stage_meters(stages, args.redis_url, env["SHOPCARDD_AMQP_URL"], settings.mongodb_uri)
        waiting = functools.partial(_messages_waiting, env["SHOPCARDD_AMQP_URL"])
        sale = functools.partial(_sale, args, runtime, deal.deal_id, vouchers, tqdm, meters, waiting)
        sales = _sweep(args, sale)
        problems = _check(runtime, vouchers, deal.deal_id, total, env["SHOPCARDD_AMQP_URL"])
        print_sales(sales, args)
        write_lag_plot(args.plot, sales)
        print(f"plot: {args.plot}")
        return _verdict(problems, total)

    print(f"soak: {args.claims:,} claims, relay and three workers running; persist killed halfway")
    half = args.claims // 2
    answers = Answers()
    probe = StoredProbe(vouchers, answers)
    with Sampler(probe) as sampler:
        with tqdm(total=args.claims, unit="claim", desc="claims") as bar:
            started = time.monotonic()
            _claim_all(runtime, deal.deal_id, half, args.threads, 0, bar, answers)
            stages["persist"].kill()
            stages["persist"].start()
            _claim_all(runtime, deal.deal_id, args.claims - half, args.threads, half, bar, answers)
            claim_seconds = time.monotonic() - started
        with tqdm(total=args.claims, unit="doc", desc="stored") as bar:
            _until(
                lambda: probe.stored >= args.claims,  # the sampler's thread moves it
                "every soak voucher stored",
                600,
                lambda: bar.update(probe.stored - bar.n),
            )
    _until_counted(vouchers, args.claims)
    lags = store_lags(answers.times, sampler.samples)

    print(f"capacity: {args.backlog:,} claims waiting, then the relay alone, then persist alone")
    for stage in stages.values():
        stage.stop()
    gate = runtime.gate
    with tqdm(total=args.backlog, unit="claim", desc="backlog") as bar:
        _claim_all(runtime, deal.deal_id, args.backlog, args.threads, args.claims, bar, answers)
    stages["relay"].start()
    relay_cpu = stages["relay"].cpu_seconds()
    relay_seconds = _until(lambda: not gate.read_outbox(limit=1), "the relay drained the backlog", 600)
    relay_cpu = stages["relay"].cpu_seconds() - relay_cpu
    stages["persist"].start()
    ready = _ready_messages(env["SHOPCARDD_AMQP_URL"], "persist", stack)
    # The store is probed only once the queue holds nothing more to hand over (at most a
    # prefetch window in the worker's hands): the probe's lookups are the server's work too.
    persist_cpu = stages["persist"].cpu_seconds()
    persist_seconds = _until(lambda: ready() == 0 and probe() >= total, "persist stored the backlog", 600)
    persist_cpu = stages["persist"].cpu_seconds() - persist_cpu
    _until_counted(vouchers, total)  # a check, not timed: the count walks the collection
    stored_backlog = args.backlog
    bare_rate = _bare_insert(
        client[settings.mongodb_database]["bare"], vouchers, deal.deal_id, stored_backlog
    )

    for name in ("notify", "analytics"):  # stopped for the capacity measures: the backlog waits
        stages[name].start()
    problems = _check(runtime, vouchers, deal.deal_id, total, env["SHOPCARDD_AMQP_URL"])

    relay_rate = args.backlog / relay_seconds
    persist_rate = stored_backlog / persist_seconds
    rows = [
        (
            f"soak claims/s (claim service, {args.threads} threads, Redis gate)",
            f"{args.claims / claim_seconds:,.0f}",
        ),
        ("end-to-end lag p50 ms (claim answered -> stored)", f"{percentile(lags, 0.5) * 1000:,.0f}"),
        ("end-to-end lag p99 ms", f"{percentile(lags, 0.99) * 1000:,.0f}"),
        (f"relay events/s (alone, {args.backlog:,} waiting)", f"{relay_rate:,.0f}"),
        ("relay events per CPU second (alone)", f"{args.backlog / relay_cpu:,.0f}"),
        ("persist documents/s (alone)", f"{persist_rate:,.0f}"),
        (
            "persist documents per CPU second (alone; the store's own CPU apart)",
            f"{stored_backlog / persist_cpu:,.0f}",
        ),
        ("bare insert_many documents/s (same server, same batches)", f"{bare_rate:,.0f}"),
        ("persist / bare insert_many", f"{persist_rate / bare_rate:.2f}"),
    ]
    print("\n| measure | figure |\n| --- | ---: |")
    for label, figure in rows:
        print(f"| {label} | {figure} |")
    print()
    return _verdict(problems, total)


def _sweep(args: argparse.Namespace, sale: Callable[..., SaleLag]) -> list[SaleLag]:
    """One sale of ``args.seconds`` at each of ``args.rates``, every stage running, after a
    warm-up sale of a second at the first rate, not counted: the stages' first batches (their
    connections, the store's first writes) belong to no rate."""
    warm_up = sale(args.rates[0], 0, seconds=1)
    sales, start = [], warm_up.claims
    for rate in args.rates:
        done = sale(rate, start)
        print(f"sale at {rate:,}/s: lag p99 {done.lag(0.99):,.1f} s, all stored {done.drained:,.1f} s after")
        sales.append(done)
        start += done.claims
    return sales


def _sale(
    args: argparse.Namespace,
    runtime: Any,
    deal_id: str,
    vouchers: Any,
    tqdm: Any,
    meters: dict[str, Callable[[], float]],
    waiting: Callable[[], int],
    rate: int,
    start: int,
    seconds: int | None = None,
) -> SaleLag:
    """A sale at ``rate`` claims/s for ``seconds`` (``args.seconds``), users from ``start`` on,
    waited out until its last voucher is stored: its lag; and, once every queue is empty, the
    CPU each stage took for it (``meters``)."""
    count = rate * (seconds or args.seconds)
    answers = Answers()
    probe = StoredProbe(vouchers, answers)
    cpu = {name: meter() for name, meter in meters.items()}
    with Sampler(probe) as sampler:
        with tqdm(total=count, unit="claim", desc=f"sale at {rate:,}/s") as bar:
            began = time.monotonic()
            _claim_all(runtime, deal_id, count, args.threads, start, bar, answers, rate)
            seconds = time.monotonic() - began
        drained = _until(lambda: probe.stored >= count, f"the sale at {rate}/s stored", 900)
    _until(lambda: waiting() == 0, f"the sale at {rate}/s out of every queue", 900, every=0.5)
    used = {name: meters[name]() - before for name, before in cpu.items()}
    lags = store_lags(answers.times, sampler.samples)
    return SaleLag(rate, count / seconds, lags, drained, used, count)


def _check(runtime: Any, vouchers: Any, deal_id: str, total: int, amqp_url: str) -> list[str]:
    """What is wrong once every stage has caught up: the store holds exactly the ``total``
    vouchers issued, each once; the outbox is empty; the deal's statistics count them; nothing
    parked."""
    from shopcardd_backend.queue.rabbitmq import queue_depth

    print("checks: store = vouchers issued, each once; the stats add up; nothing parked")
    issued = {f"user{n}" for n in range(total)}
    stored_users = [doc["user_id"] for doc in vouchers.find({"deal_id": deal_id}, {"user_id": 1})]
    problems = []
    if len(stored_users) != total or set(stored_users) != issued:
        problems.append(
            f"store holds {len(stored_users)} vouchers ({len(set(stored_users))} users), issued {total}"
        )
    if runtime.gate.read_outbox(limit=1):
        problems.append("the outbox is not empty")
    counted = _until_counted_in_stats(runtime.settings, deal_id, total)
    if counted != total:
        problems.append(f"the deal's statistics count {counted} claims issued, not {total}")
    parked = {job: queue_depth(amqp_url, f"{job}.parked") for job in JOBS}
    if any(parked.values()):
        problems.append(f"parked messages: {parked}")
    return problems


def _verdict(problems: list[str], total: int) -> int:
    if problems:
        for problem in problems:
            print(f"FAILED: {problem}")
        return 1
    print(f"all {total:,} vouchers stored exactly once; the stats count them all; nothing parked")
    return 0


def _bare_insert(bare: Any, vouchers: Any, deal_id: str, limit: int, batch: int = 500) -> float:
    """Bare ``insert_many`` documents/s: up to ``limit`` of the deal's documents written again,
    in the worker's batch size, to another collection of the same server with the same indexes
    (the store's index upkeep is the server's cost, not the worker's)."""
    for name, spec in vouchers.index_information().items():
        if name != "_id_":
            bare.create_index(spec["key"], name=name, unique=spec.get("unique", False))
    documents = [
        {**doc, "_id": f"bare-{doc['_id']}"} for doc in vouchers.find({"deal_id": deal_id}).limit(limit)
    ]
    started = time.monotonic()
    for start in range(0, len(documents), batch):
        bare.insert_many(documents[start : start + batch], ordered=False)
    return len(documents) / (time.monotonic() - started)


def _ready_messages(amqp_url: str, job: str, stack: ExitStack) -> Any:
    """A function: the messages ready in a job's queue, asked on one open channel."""
    from shopcardd_backend.queue.base import queue_name
    from shopcardd_backend.queue.rabbitmq import close_quietly, connect

    connection = connect(amqp_url)
    stack.callback(close_quietly, connection)
    channel = connection.channel()
    return lambda: channel.queue_declare(queue_name(job), passive=True).method.message_count


def _messages_waiting(amqp_url: str) -> int:
    """The messages ready in the three jobs' queues together, asked on a connection of its own
    (one held open through a sale would miss its heartbeats)."""
    from shopcardd_backend.queue.base import queue_name
    from shopcardd_backend.queue.rabbitmq import close_quietly, connect

    connection = connect(amqp_url)
    try:
        channel = connection.channel()
        return sum(channel.queue_declare(queue_name(job), passive=True).method.message_count for job in JOBS)
    finally:
        close_quietly(connection)


def _until_counted(vouchers: Any, total: int) -> float:
    """Confirm by a count what the probe found (a voucher stored out of order could fool it)."""
    return _until(lambda: vouchers.count_documents({}) >= total, "every voucher stored", 600, every=1.0)


def _until_counted_in_stats(settings: Any, deal_id: str, total: int) -> int:
    """The deal's statistics' count of claims issued, once it reached ``total``.

    The count is an aggregation over the deal's vouchers, which SecantusDB walks: 180,000 took it
    longer than the store's 5 s socket timeout, and a query given up on by the client still runs
    on the server, so asking again each second piled them up. So it is asked one at a time, on a
    client of its own that waits for the answer."""
    from shopcardd_backend.stores.mongo import MongoDocumentStore

    store = MongoDocumentStore(settings.mongodb_uri, settings.mongodb_database, timeout_ms=600_000)
    try:

        def counted() -> int:
            return sum(minute.issued for minute in store.claims_by_minute(deal_id))

        with suppress(RuntimeError):  # a shortfall is reported by the caller, with the count
            _until(lambda: counted() >= total, "the stats caught up", 600, every=1.0)
        return counted()
    finally:
        store.close()
