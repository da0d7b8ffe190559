"""`make demo`: ShopCardd end to end on the embedded profile, narrated as it runs.

Each part of the product tells its chapter from a module ``scripts/demo_*.py`` with a
``run(demo: Demo) -> None`` function; chapters run in the order of ``CHAPTERS``.
Everything the demo makes goes under ``demo-out/`` (made afresh on each run), and every
command is printed as a user would type it, so the demo doubles as a tutorial.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ["demo_voucher", "demo_device", "demo_backend", "demo_sync", "demo_lan"]

BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"


class DemoFailed(Exception):
    """A step did not do what the demo said it would."""


@dataclass
class Demo:
    out: Path
    color: bool = True
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    facts: dict[str, object] = field(default_factory=dict)
    """What one chapter hands to the next (key paths, a voucher, the backend's URL)."""
    endings: list[Callable[[], None]] = field(default_factory=list)
    """What to do after the last chapter, latest first (stop a server a later chapter used too)."""

    def at_end(self, ending: Callable[[], None]) -> None:
        """Run ``ending`` once every chapter is done, or one failed."""
        self.endings.append(ending)

    def end_now(self) -> None:
        """Run the endings now: a chapter that shows life without the backend stops it first."""
        if not _end(self):
            raise DemoFailed("an ending did not do what it said")

    def _paint(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.color else text

    def chapter(self, title: str) -> None:
        print("\n" + self._paint(BOLD, f"== {title} =="), flush=True)

    def say(self, text: str) -> None:
        print(text, flush=True)

    def ok(self, text: str) -> None:
        print(self._paint(GREEN, f"  ok: {text}"), flush=True)

    def refused(self, text: str) -> None:
        print(self._paint(RED, f"  refused: {text}"), flush=True)

    def run(
        self, *args: str | Path, expect: int | set[int] = 0, stdin: str | None = None, show: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as a user would type it, print it and its output, check its exit code."""
        argv = self._announce(args)
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=self.env, cwd=self.out)
        if show:
            for line in (proc.stdout + proc.stderr).rstrip().splitlines():
                print("  " + line)
        allowed = {expect} if isinstance(expect, int) else expect
        if proc.returncode not in allowed:
            raise DemoFailed(
                f"{args[0]} exited {proc.returncode}, expected {sorted(allowed)}:\n{proc.stderr}"
            )
        return proc

    def spawn(self, *args: str | Path, log: Path, stdin: bool = False) -> subprocess.Popen[bytes]:
        """Start a long-running command (a server, a till) in the background, its output in ``log``;
        with ``stdin`` the demo types into it (``proc.stdin``)."""
        argv = self._announce(args, background=True)
        with log.open("wb") as out:
            return subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin else None,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.out,
            )

    def _announce(self, args: tuple[str | Path, ...], background: bool = False) -> list[str]:
        """Print the command as typed; the argv to run, with the venv's console script found."""
        argv = [str(a) for a in args]
        shown = "$ " + " ".join(shlex.quote(a) for a in argv) + (" &" if background else "")
        print(self._paint(DIM, shown), flush=True)
        return [shutil.which(argv[0], path=str(Path(sys.executable).parent)) or argv[0], *argv[1:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the ShopCardd demo end to end.")
    parser.add_argument("--out", type=Path, default=ROOT / "demo-out", help="folder for what the demo makes")
    parser.add_argument("--no-color", action="store_true", help="plain output")
    args = parser.parse_args(argv)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    demo = Demo(out=args.out.resolve(), color=not args.no_color and sys.stdout.isatty())
    demo.env["SHOPCARDD_DATA_DIR"] = str(demo.out / "backend-data")
    sys.path.insert(0, str(Path(__file__).parent))
    sys.modules.setdefault("demo", sys.modules[__name__])  # chapters' DemoFailed is the one caught below
    started = time.monotonic()
    try:
        try:
            told_all = _chapters(demo)
        finally:
            ended = _end(demo)  # a server is stopped even when a chapter failed or Ctrl-C came
    except KeyboardInterrupt:
        print("\ndemo stopped (Ctrl-C); what it started is stopped", file=sys.stderr)
        return 130
    if not (told_all and ended):
        return 1
    print(f"\nDemo finished in {time.monotonic() - started:.1f} s; everything it made is in {demo.out}")
    data = shlex.quote(str(demo.out / "backend-data"))
    print(
        "\nThe merchant's console, on the demo's backend: serve it with\n"
        f"  SHOPCARDD_DATA_DIR={data} .venv/bin/shopcardd-backend serve --port 8000\n"
        "open http://127.0.0.1:8000/console and sign in with the API key of\n"
        f"  SHOPCARDD_DATA_DIR={data} .venv/bin/shopcardd-backend merchant create --merchant my-shop\n"
        "(its last line), or with cafe-42's key printed in chapter 3. docs/console.md shows each page."
    )
    return 0


def _chapters(demo: Demo) -> bool:
    """Tell every chapter in order; whether all did what they said."""
    for name in CHAPTERS:
        chapter = importlib.import_module(name)
        try:
            chapter.run(demo)
        except DemoFailed as exc:
            print(f"\ndemo failed in {name}: {exc}", file=sys.stderr)
            return False
    return True


def _end(demo: Demo) -> bool:
    """Run the endings, latest first; whether every one did what it said."""
    ok = True
    while demo.endings:
        try:
            demo.endings.pop()()
        except DemoFailed as exc:
            print(f"\ndemo failed at its end: {exc}", file=sys.stderr)
            ok = False
    return ok


if __name__ == "__main__":
    sys.exit(main())
