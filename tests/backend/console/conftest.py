"""The console in a real browser: Debian's headless Chromium driven by Selenium through
/usr/bin/chromedriver (``make test`` installs both), against ``shopcardd-backend serve`` on a
free port. Nothing downloads a browser: without Chromium the tests skip (fail under CI=true).

A failed test leaves a screenshot of the page beside its temporary files (the path is in the
report). ``SHOPCARDD_CONSOLE_SCREENSHOTS=DIR`` also saves each page the tests check, by name,
into DIR: how docs/console/*.png are made.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from workers.conftest import mail_server  # noqa: F401 (the notify worker's tests' mail server, as a fixture here)

from shopcardd_bench.served import running_backend

AXE = Path(__file__).parents[3] / "backend/shopcardd_backend/console/static/vendor/axe-core-4.14.1/axe.min.js"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=420,900",  # a phone's width: the console must read there
)


def backend_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a served backend: the embedded profile on the test's own folder."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPCARDD_", "PROMETHEUS_"))}
    return {**clean, "SHOPCARDD_DATA_DIR": str(data_dir), **settings}


def backend_command(env: dict[str, str], *args: str) -> str:
    exe = str(Path(sys.executable).with_name("shopcardd-backend"))
    proc = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout


@dataclass
class Served:
    """A served backend with one merchant, ``cafe``."""

    url: str
    env: dict[str, str]
    api_key: str

    def user_token(self, user: str) -> str:
        return backend_command(self.env, "user-token", user).strip()

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"X-API-Key": self.api_key, **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=10, **kwargs)


def serve(tmp_path: Path, **settings: str) -> Iterator[Served]:
    env = backend_env(tmp_path / "data", **settings)
    api_key = backend_command(env, "merchant", "create", "--merchant", "cafe").splitlines()[-1]
    with running_backend(env, tmp_path / "serve.log") as backend:
        yield Served(backend.url, env, api_key)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("console"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def browser(request: pytest.FixtureRequest, tmp_path: Path, chromium: tuple[str, str]) -> Iterator[Any]:
    """A fresh headless Chromium (its own profile folder); a screenshot of the page on failure."""
    binary, chromedriver = chromium
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        options=options, service=Service(chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    )
    driver.set_page_load_timeout(30)
    driver.implicitly_wait(5)  # an element looked for is waited for (a page still loading)
    try:
        yield driver
    finally:
        if request.node.stash.get(FAILED, False):
            shot = tmp_path / "failure.png"
            driver.save_screenshot(str(shot))
            print(f"screenshot of the page at the failure: {shot}")  # shown with the failure
        driver.quit()


def check_page(driver: Any, name: str) -> None:
    """Run axe-core (vendored) on the page: no serious or critical violation. Save the page's
    screenshot as NAME.png when SHOPCARDD_CONSOLE_SCREENSHOTS names a folder."""
    driver.execute_script(AXE.read_text())
    violations = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations.map("
        "v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' '))}))));"
    )
    grave = [v for v in violations if v["impact"] in ("serious", "critical")]
    assert not grave, f"accessibility violations on {name}: {grave}"
    folder = os.environ.get("SHOPCARDD_CONSOLE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(420, min(max(height, 600), 1400))
        shot = Path(folder) / f"{name}.png"
        driver.save_screenshot(str(shot))
        from PIL import Image  # a 64-colour palette keeps the docs' pictures small

        with Image.open(shot) as image:
            image.convert("RGB").quantize(64).save(shot, optimize=True)
        driver.set_window_size(420, 900)
