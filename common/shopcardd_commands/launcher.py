"""The console scripts' entry points: check that the command's part is installed, then run it.

One distribution, ``shopcardd``, installs all four commands, but each part's libraries come
with its extra (``pip install 'shopcardd[device]'`` on a counter). Without this check a
command of a part that is not installed ends in a ``ModuleNotFoundError`` traceback, or worse,
deep inside a scan loop; with it, the command says in one line which extra to install (exit 2).
It lives in the base distribution because every install has all four commands.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

EXIT_USAGE: Final = 2


@dataclass(frozen=True)
class Part:
    """A command's part: its extra, its real ``main`` and the modules that extra installs."""

    extra: str
    main: str
    """``module:function``, imported only once the part's libraries are there."""
    needs: tuple[str, ...]
    """Import names of the extra's libraries (tests/test_layout.py keeps them true to pyproject.toml)."""


_DEVICE: Final = ("gpiozero", "zxingcpp", "pyzbar", "numpy", "PIL", "requests")
_BACKEND: Final = (
    "fastapi",
    "uvicorn",
    "pydantic",
    "pydantic_settings",
    "redis",
    "nacl",
    "pymongo",
    "pika",
    "prometheus_client",
    "requests",
    "jinja2",
    "python_multipart",
)
_PROVISION: Final = ("segno", "requests")

_BENCH: Final = ("httpx", "h2", "aiohttp", "tqdm", "matplotlib", "granian", "aiosmtpd")

PARTS: Final = {
    "shopcardd-device": Part("device", "shopcardd_device.cli:main", _DEVICE),
    "shopcardd-backend": Part("backend", "shopcardd_backend.cli:main", _BACKEND),
    "shopcardd-provision": Part("provision", "shopcardd_provision.cli:main", _PROVISION),
    "shopcardd-bench": Part(
        "bench",
        "shopcardd_bench.cli:main",
        (*_DEVICE, *_BACKEND, *_PROVISION, *_BENCH),
    ),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_modules(part: Part) -> list[str]:
    """The part's libraries that cannot be imported here (looked up, not imported: fast)."""
    return [module for module in part.needs if not _installed(module)]


def not_installed(command: str, part: Part, missing: list[str]) -> str:
    """The one line that names what is missing and the extra that brings it."""
    return (
        f"{command}: the {part.extra} part of ShopCardd is not installed here (no module "
        f"{', '.join(missing)}); install it with: pip install 'shopcardd[{part.extra}]'"
    )


def launch(command: str) -> int:
    """Run ``command``'s real ``main`` once its part's libraries are importable."""
    part = PARTS[command]
    missing = missing_modules(part)
    if missing:
        print(not_installed(command, part, missing), file=sys.stderr)
        return EXIT_USAGE
    module, _, function = part.main.partition(":")
    try:
        main: Callable[[], int | None] = getattr(importlib.import_module(module), function)
        return int(main() or 0)
    except ModuleNotFoundError as exc:  # a library the extra brings but ``needs`` forgot
        if not exc.name or exc.name.startswith("shopcardd"):
            raise
        print(not_installed(command, part, [exc.name]), file=sys.stderr)
        return EXIT_USAGE


def device() -> int:
    return launch("shopcardd-device")


def backend() -> int:
    return launch("shopcardd-backend")


def provision() -> int:
    return launch("shopcardd-provision")


def bench() -> int:
    return launch("shopcardd-bench")
