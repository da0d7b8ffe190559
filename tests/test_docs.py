"""The guides' command blocks run as written: a newcomer copies them into a fresh shell.

Every fenced block of README.md and docs/ names its language; each ``sh`` block runs in a fresh
shell (no virtual environment active, no ShopCardd variables) from the repository root after
``make demo``, with ``set -euo pipefail``, and leaves no untracked file in the repository.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from servers import yields_to_the_suite

ROOT = Path(__file__).resolve().parent.parent
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"sh", "text", "toml", "json", "mermaid"}
"""``sh`` blocks are commands and are run; the others are shown, never run (``mermaid``: a diagram
GitHub draws)."""
NOT_RUN: dict[str, str] = {}
"""Guides whose blocks are not run yet, and why (their fences are still checked): none now; a
list of long-running services is fenced as ``text``, shown and not run."""
STAND_IN = (re.compile(r"^make (test|check|demo)\b", re.MULTILINE), r"make -n \1")
"""The commands not run as written here (``-n``: make shows what it would run, which checks the
target and its prerequisites exist): the test suite, which cannot run inside itself, and
``make demo``, which ``after_make_demo`` has just run as written in the same fresh shell."""
FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    guide: str
    line: int
    language: str
    text: str

    def __str__(self) -> str:
        return f"{self.guide}:{self.line}"


def fenced_blocks(guide: Path) -> list[Block]:
    text = guide.read_text()
    name = str(guide.relative_to(ROOT))
    return [
        Block(name, text.count("\n", 0, match.start()) + 1, match[1], match[2])
        for match in FENCE.finditer(text)
    ]


def fresh_shell_environment() -> dict[str, str]:
    """The environment of a new login shell: no venv on PATH, none of the project's variables."""
    venv_bin = str(ROOT / ".venv" / "bin")
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "VIRTUAL_ENV" and not name.startswith(("SHOPCARDD_", "GPIOZERO_", "PYTHON"))
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def untracked_files() -> list[str]:
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(line[3:] for line in status.splitlines() if line.startswith("??"))


RUN = [
    block
    for guide in GUIDES
    if str(guide.relative_to(ROOT)) not in NOT_RUN
    for block in fenced_blocks(guide)
    if block.language == "sh"
]


def test_every_fenced_block_names_its_language() -> None:
    """So no command hides in an untagged block that the test below would not run."""
    for guide in GUIDES:
        for block in fenced_blocks(guide):
            assert block.language in LANGUAGES, f"{block}: fence language {block.language!r}"
    assert {block.guide for block in RUN} >= {"README.md", "docs/device.md"}


@pytest.fixture(scope="module")
def after_make_demo() -> None:
    result = subprocess.run(
        ["make", "demo"], cwd=ROOT, env=fresh_shell_environment(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.xdist_group("docs")  # one `make demo` in the repository, not one per worker
@pytest.mark.usefixtures("after_make_demo")
# The guides' longest block is the rehearsal at its defaults (three to four minutes alone, its
# drain failing after 60 s without progress): the block's own 900 s bound, plus `make demo` once.
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("block", RUN, ids=str)
def test_a_command_block_runs_as_written_in_a_fresh_shell(block: Block) -> None:
    before = untracked_files()
    script = STAND_IN[0].sub(STAND_IN[1], block.text)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=fresh_shell_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        preexec_fn=yields_to_the_suite,  # the rehearsal block's 60 s sale
    )
    assert result.returncode == 0, f"{block} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert untracked_files() == before, f"{block} left files in the repository"
