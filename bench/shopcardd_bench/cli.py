"""``shopcardd-bench``: measure the voucher format, the counter device, the claim API and its
queue pipeline.

Each benchmark is a module of this package with ``add_arguments(parser)`` and
``run(args) -> int``; it is imported only when chosen, so benchmarking the voucher on a
counter device needs none of the backend's libraries.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from shopcardd_commands.commandline import CommandParser

BENCHMARKS = {
    "voucher": "sign and verify operations per second per algorithm, token length and QR version",
    "device": "per-frame cost of decode, verify and record on the counter, and scans per second",
    "claims": "claim throughput, latency and CPU of the claim API on Redis (one server, or a cluster)",
    "hotdeal": "one hot deal on a local Redis Cluster in 1 and N buckets: claims/s and Redis CPU per primary",
    "pipeline": "soak of claims through the Redis gate, relay, RabbitMQ and the three workers",
    "sync": "time for a counter to sync 10,000 redemptions with a served backend over loopback",
    "lan": "gossip delay between two counters on loopback; the scan loop per frame with gossip on and off",
    "fuzz": "fuzz the counter (image bytes in), the voucher parser (text in) and the API, for --seconds each",
    "rehearsal": "the production topology on loopback, a sale through it while parts fail: anything lost?",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shopcardd-bench",
        description="Measure ShopCardd and print the figures as a table. "
        "Every figure is the median of several runs on this machine.",
    )
    sub = parser.add_subparsers(
        dest="benchmark", required=True, metavar="BENCHMARK", parser_class=CommandParser
    )
    for name, summary in BENCHMARKS.items():
        module = importlib.import_module(f"shopcardd_bench.{name}")
        sub_parser = sub.add_parser(name, help=summary, description=module.__doc__)
        module.add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"shopcardd_bench.{args.benchmark}")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
