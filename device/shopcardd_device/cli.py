"""``shopcardd-device``: placeholder until the counter device issue lands."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shopcardd-device", description="The ShopCardd counter device.")
    parser.add_argument("command", choices=["run", "verify", "sync", "status"])
    parser.parse_args(argv)
    print("shopcardd-device: not yet built", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
