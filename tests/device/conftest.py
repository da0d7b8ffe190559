"""Fixtures of the counter device tests: keys, vouchers, a device config on tmp paths, GPIO mocks.

Every test gets its own data folder and ledger; nothing reads /etc/shopcardd.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from shopcardd_device.config import DeviceConfig
from shopcardd_provision.keys import keygen
from shopcardd_voucher import SigningKey, issue

MERCHANT = "m-corner-cafe"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Keys:
    folder: Path
    signing: SigningKey
    forger: SigningKey
    """Another private key under the same kid: what a forger would sign with."""

    @property
    def jwks(self) -> Path:
        return self.folder / "jwks.json"


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    made = keygen("EdDSA", "k1", folder)
    return Keys(folder, SigningKey.load("k1", made.private_key_path), SigningKey.generate("k1"))


Mint = Callable[..., str]


@pytest.fixture(scope="session")
def mint(keys: Keys) -> Mint:
    """Issue a voucher (by default genuine, for this merchant, valid for an hour from now)."""
    counter = iter(range(10**9))

    def make(
        *, key: SigningKey | None = None, merchant: str = MERCHANT, ttl: int = 3600, **kwargs: object
    ) -> str:
        return issue(
            key or keys.signing,
            deal=str(kwargs.pop("deal", "d-espresso")),
            merchant=merchant,
            user=str(kwargs.pop("user", f"u-{next(counter)}")),
            ttl=ttl,
            **kwargs,  # type: ignore[arg-type]
        )

    return make


WriteConfig = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path, keys: Keys) -> WriteConfig:
    """Write a device.toml on this test's tmp path; extra lines are appended as given."""

    def write(extra: str = "", *, name: str = "device.toml", top: str = "") -> Path:
        path = tmp_path / name
        path.write_text(
            f'device_id = "counter-1"\nmerchant_id = "{MERCHANT}"\ndata_dir = "data"\n'
            f'keyset = "{keys.jwks}"\n{top}\n[gpio]\nsignal_seconds = 0.01\n{extra}\n'
        )
        return path

    return write


@pytest.fixture
def config(write_config: WriteConfig) -> DeviceConfig:
    return DeviceConfig.load(write_config())


@pytest.fixture
def mock_factory() -> Iterator[MockFactory]:
    """A fresh MockFactory per test, as gpiozero's own tests do."""
    saved = Device.pin_factory
    Device.pin_factory = MockFactory()
    try:
        yield Device.pin_factory
    finally:
        Device.pin_factory.close()
        Device.pin_factory = saved


def mock_gpio_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with GPIO on gpiozero's mock pins, plus ``env``."""
    return {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", **(env or {})}


def start_device(
    *args: str | Path, stderr: int | None = subprocess.PIPE, text: bool = True
) -> subprocess.Popen[Any]:
    """Start ``shopcardd-device`` with pipes to its stdin and stdout, GPIO on mock pins, for a test
    that talks to it while it runs (feeds lines, reads answers, sends signals)."""
    return subprocess.Popen(
        [str(BIN / "shopcardd-device"), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=text,
        env=mock_gpio_env(),
    )


def device_command(
    *args: str | bytes | Path, stdin: str | bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``shopcardd-device`` as an operator would, GPIO on gpiozero's mock pins.

    Arguments and stdin may be bytes (what a terminal or a scanner really sends); the output is
    decoded strictly, so a command that writes anything but UTF-8 fails the test.
    """
    done = subprocess.run(
        [str(BIN / "shopcardd-device"), *(a if isinstance(a, bytes) else str(a) for a in args)],
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        capture_output=True,
        env=mock_gpio_env(env),
        timeout=60,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8")
    )


def device_in_process(
    *args: str | Path, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``shopcardd-device ARGS`` answered by ``cli.main`` in this process, for the tests about what a
    command says and records rather than about the process (its exit status as the shell sees it,
    signals, a stream on stdin, bytes the OS hands over: ``device_command``). A process spends most
    of its time importing; this takes milliseconds. Output is held to what a process could write:
    stdout strict UTF-8, and an exception is not caught, so it fails the test as a traceback would.
    The GPIO, the log handlers and the signal handlers it sets are put back after."""
    from shopcardd_device import cli
    from shopcardd_device.log import LOGGER_NAME

    written, logged = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(written, encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(logged, encoding="utf-8", errors="backslashreplace", write_through=True)
    logger = logging.getLogger(LOGGER_NAME)
    saved_log = logger.handlers[:], logger.level, logger.propagate
    saved_signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    saved_factory, Device.pin_factory = Device.pin_factory, MockFactory()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        patch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8"))
        patch.setattr(sys, "stdout", out)
        patch.setattr(sys, "stderr", err)
        try:
            code = cli.main([str(arg) for arg in args])
        except SystemExit as exc:  # argparse: --help, a usage error
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        finally:
            Device.pin_factory.close()
            Device.pin_factory = saved_factory
            logger.handlers[:], logger.propagate = saved_log[0], saved_log[2]
            logger.setLevel(saved_log[1])
            for sig, handler in saved_signals.items():
                signal.signal(sig, handler)
    stdout, stderr = written.getvalue().decode("utf-8"), logged.getvalue().decode("utf-8")
    out.detach(), err.detach()  # the wrappers would close the buffers when collected
    return subprocess.CompletedProcess([str(BIN / "shopcardd-device"), *map(str, args)], code, stdout, stderr)


def strict_json(line: str) -> Any:
    """Parse ``line`` as a strict JSON parser would: a lone surrogate (undecodable input echoed
    as ``\\udcff``) is refused, as jq, Go and Rust refuse it."""
    value = json.loads(line)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # raises UnicodeEncodeError on a surrogate
    return value


@contextmanager
def read_only_folder(folder: Path) -> Iterator[None]:
    """Make ``folder`` read-only as a device may find it: a chmod for a user, a read-only bind mount
    for root (who ignores permissions); skipped where neither can be done."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("mount") is None:
        pytest.skip("root needs mount(8) to make a read-only folder")
    bound = subprocess.run(["mount", "--bind", folder, folder], capture_output=True)
    if bound.returncode:
        pytest.skip(f"cannot bind-mount a folder read-only here: {bound.stderr.decode().strip()}")
    try:
        remounted = subprocess.run(["mount", "-o", "remount,ro,bind", folder], capture_output=True)
        if remounted.returncode:
            pytest.skip(f"cannot remount a folder read-only here: {remounted.stderr.decode().strip()}")
        yield
    finally:
        subprocess.run(["umount", folder], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path / "data"`` (the test configs' ``data_dir``) as a real 2 MiB filesystem of its own
    (tmpfs), mounted for this test and removed after it: a disk a test may fill. Where mount is not
    permitted (not root, a container without the capability) it skips, saying so; under CI=true it
    fails instead, as the services' tests do."""
    folder = tmp_path / "data"
    folder.mkdir()
    if shutil.which("mount") is None:
        problem = "mount(8) is not installed"
    else:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "shopcardd-test", str(folder)],
            capture_output=True,
            text=True,
        )
        problem = (
            (mounted.stderr.strip() or f"mount exited {mounted.returncode}") if mounted.returncode else ""
        )
    if problem:
        message = f"cannot mount a small filesystem to fill here ({problem}): run as root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte with one file; deleting it frees the space."""
    filler = folder / "filler"
    chunk = b"\0" * 65_536
    with filler.open("wb", buffering=0) as out:
        while chunk:
            try:
                out.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]  # fill the last blocks too
    return filler
