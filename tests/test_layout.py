"""The walls between the parts, as a newcomer would trip over them."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_voucher_package_loads_no_other_shopcardd_package() -> None:
    code = "import sys, shopcardd_voucher; print(sorted(m for m in sys.modules if m.startswith('shopcardd')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert (
        loaded.strip() == "['shopcardd_voucher', 'shopcardd_voucher.keys', 'shopcardd_voucher.limits', "
        "'shopcardd_voucher.reasons', 'shopcardd_voucher.voucher']"
    )


def test_a_counter_device_installs_none_of_the_backend_libraries() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    device_needs = " ".join(project["dependencies"] + project["optional-dependencies"]["device"]).lower()
    for backend_only in ("fastapi", "uvicorn", "redis", "pymongo", "pika"):
        assert backend_only not in device_needs


def test_every_command_explains_itself() -> None:
    bin_dir = Path(sys.executable).parent
    for command in ("shopcardd-device", "shopcardd-backend", "shopcardd-provision", "shopcardd-bench"):
        result = subprocess.run([bin_dir / command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout and len(result.stdout.splitlines()) > 3


@pytest.mark.parametrize(
    ("command", "arguments"),
    [
        (["shopcardd-device", "verify"], ["TOKEN"]),
        (["shopcardd-provision", "keygen"], ["--kid", "k1", "--out", "keys"]),
        (["shopcardd-backend", "user-token"], ["alice"]),
        (["shopcardd-backend", "merchant", "create"], ["--merchant", "m1"]),
        (["shopcardd-bench", "voucher"], []),
    ],
)
def test_a_misspelt_option_is_answered_with_the_usage_of_the_command_typed(
    command: list[str], arguments: list[str], tmp_path: Path
) -> None:
    program, *subcommand = command
    result = subprocess.run(
        [Path(sys.executable).parent / program, *subcommand, *arguments, "--jsn"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: {' '.join(command)} "), result.stderr
    assert "unrecognized arguments: --jsn" in result.stderr
    assert list(tmp_path.iterdir()) == []  # refused before doing anything


def test_a_benchmark_refuses_a_count_it_cannot_measure() -> None:
    bench = Path(sys.executable).parent / "shopcardd-bench"
    for benchmark, option in (("device", "--runs"), ("claims", "--concurrency"), ("voucher", "--count")):
        result = subprocess.run([bench, benchmark, option, "0"], capture_output=True, text=True)
        assert result.returncode == 2 and "must be 1 or more, not 0" in result.stderr, result.stderr


HIDE_AND_RUN = """
import importlib.abc, importlib.metadata, sys

hidden = set(sys.argv[1].split(","))


class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Hide())
sys.argv = sys.argv[2:]
[entry] = importlib.metadata.entry_points(group="console_scripts", name=sys.argv[0])
sys.exit(entry.load()())
"""
"""Runs the installed console script's entry point as the script would, with modules hidden as
if their distribution were not installed."""


@pytest.mark.parametrize(
    ("hidden", "command", "extra"),
    [
        ("pydantic", ["shopcardd-backend", "--help"], "backend"),
        ("segno", ["shopcardd-provision", "qr", "TOKEN", "--out", "v.png"], "provision"),
        ("segno", ["shopcardd-bench", "voucher"], "bench"),
        ("numpy", ["shopcardd-device", "verify", "voucher.png"], "device"),
    ],
)
def test_a_command_whose_part_is_not_installed_names_the_extra_to_install(
    hidden: str, command: list[str], extra: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", HIDE_AND_RUN, hidden, *command], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"{command[0]}: the {extra} part of ShopCardd is not installed here (no module {hidden}); "
        f"install it with: pip install 'shopcardd[{extra}]'"
    ]
    assert list(tmp_path.iterdir()) == []


def test_the_same_entry_point_runs_the_command_when_its_part_is_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-c", HIDE_AND_RUN, "nothing", "shopcardd-backend", "--help"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: shopcardd-backend"), result.stderr


def test_the_launcher_checks_every_library_of_each_extra() -> None:
    """The modules a command checks for are exactly those its extra installs (pyproject.toml)."""
    from packaging.requirements import Requirement

    from shopcardd_commands.launcher import PARTS

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    modules_of: dict[str, set[str]] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            modules_of.setdefault(distribution.lower().replace("_", "-"), set()).add(module)

    def distributions(extra: str) -> set[str]:
        found: set[str] = set()
        for requirement in map(Requirement, extras[extra]):
            if requirement.name == "shopcardd":
                found |= {name for included in requirement.extras for name in distributions(included)}
            else:
                found.add(requirement.name.lower())
        return found

    for part in PARTS.values():
        for distribution in distributions(part.extra):  # each library is checked by a module of its own
            assert modules_of[distribution] & set(part.needs), (part.extra, distribution)
        others = set(part.needs) - {m for d in distributions(part.extra) for m in modules_of[d]}
        assert not others, (part.extra, others)


OUTSIDE_DOCUMENTS = re.compile(r"DESIGN\.md|STYLE\.md|STYLE\s+trap|\.\./shared/")
"""Names of the development workspace's own notes, which a clone of the repository does not have."""


def test_no_file_refers_to_a_document_outside_the_repository() -> None:
    """A reader who cloned the repository must find every reason it gives inside it
    (docs/architecture.md, docs/contributing.md), not in notes beside the workspace."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    citing = []
    for name in sorted(filter(None, listed.decode().split("\0"))):
        path = ROOT / name
        if path.is_file() and OUTSIDE_DOCUMENTS.search(path.read_bytes().decode(errors="replace")):
            citing.append(name)
    assert not citing, f"these files refer to documents outside the repository: {', '.join(citing)}"


NAMED_TEST = re.compile(r"`((?:[\w-]+/)*test_\w+\.py)(?:::(\w+))?`")
"""A test the threat model names, as ``path`` or ``path::function`` under tests/."""


def test_every_test_the_threat_model_names_exists() -> None:
    """Its rows claim a defence by naming the test that shows it: a renamed or removed test would
    leave a row claiming what no test checks."""
    named = NAMED_TEST.findall((ROOT / "docs" / "threat-model.md").read_text())
    assert len(named) > 40, "the threat model names its tests as `path::function`"
    missing = [
        f"{path}::{function}" if function else path
        for path, function in named
        if not (ROOT / "tests" / path).is_file()
        or (function and not re.search(rf"^def {function}\(", (ROOT / "tests" / path).read_text(), re.M))
    ]
    assert not missing, f"docs/threat-model.md names tests that do not exist: {', '.join(missing)}"


LONGEST_MODULE = 500
"""Lines a module of the product may hold: past it, a file holds more than one idea."""


def test_no_module_of_the_product_is_over_500_lines() -> None:
    """Every package of every part (device, backend, provisioning, bench, common): a newcomer reads
    one idea per file. Split a module that grows past it along its ideas, as stores/ and cli/ were."""
    modules = [
        path
        for part in ("device", "backend", "provisioning", "bench", "common")
        for path in (ROOT / part).rglob("*.py")
    ]
    assert len(modules) > 100, "the parts' folders moved: update this test"
    long = {
        str(path.relative_to(ROOT)): lines
        for path in modules
        if (lines := len(path.read_text().splitlines())) > LONGEST_MODULE
    }
    assert not long, f"modules over {LONGEST_MODULE} lines: {long}"
