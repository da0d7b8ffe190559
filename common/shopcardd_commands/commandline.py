"""Command-line plumbing that every ``shopcardd-*`` command shares.

Every part installs it (a counter device has no backend, a backend no device code), so the
four commands answer the same mistakes the same way: with the usage of the subcommand that
was typed and exit 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that refuses what it does not know itself, so a misspelt option
    (``verify --jsn``) is answered with ``verify``'s usage, not the top-level one (argparse
    otherwise hands a subcommand's unknown arguments up to the top-level parser).

    Pass it as ``add_subparsers(parser_class=CommandParser)``; nested subcommands inherit it.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` (to ``high``), else a usage error (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {value}")
        return value

    return parse


def counted(number: int, noun: str) -> str:
    """``1 peer``, ``2 peers``: a count as a summary line says it."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
