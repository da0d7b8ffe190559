"""Not yet built: see the open issue that owns `shopcardd-bench voucher`."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    del args
    print("shopcardd-bench voucher: not yet built", file=sys.stderr)
    return 2
