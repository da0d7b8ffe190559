"""``shopcardd-backend``: placeholder until the claim API issue lands."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shopcardd-backend", description="The ShopCardd backend.")
    parser.add_argument("command", choices=["serve", "merchant", "user-token", "relay", "worker"])
    parser.parse_args(argv)
    print("shopcardd-backend: not yet built", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
