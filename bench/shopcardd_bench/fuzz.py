"""Fuzz runs with a time budget: ``counter`` and ``voucher`` coverage-guided (atheris over
libFuzzer, see ``fuzz_targets``), ``api`` schemathesis against the backend's own OpenAPI schema.

- ``counter``: image bytes in (a camera frame) -> QR decode -> the counter's verdict.
- ``voucher``: token text in -> the voucher parser and verifier.
- ``api``: every route of the OpenAPI schema, requests generated from it (with a merchant's
  API key and a user's token, so the routes are reached past authentication, and every other
  request on a real deal; junk credentials are ``tests/backend/api/test_fuzz.py``'s), through the
  ASGI app on the embedded profile in a temporary data folder. Checks: no 5xx, every answer's
  status, content type and body as the schema documents them.

Prints executions, executions per second and, for the coverage-guided runs, libFuzzer's
coverage; exits 1 when a run found a failure (libFuzzer keeps the crashing input in
``--artifacts``; schemathesis's failure is printed with the request that reproduces it).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shopcardd_commands.commandline import whole_number
from shopcardd_voucher import SigningKey

TARGETS = ("counter", "voucher", "api")
FUZZ_KEY_SEED = bytes(range(32))
MERCHANT = "m-fuzz"
NOW = 1_800_000_000.0
MAX_LEN = 32_768
"""libFuzzer's longest input: a 160x160 frame of a voucher's code, with room to grow."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", nargs="*", type=_target, metavar="TARGET",
        help=f"what to fuzz: {', '.join(TARGETS)} (default all three, one after another)",
    )  # fmt: skip
    parser.add_argument(
        "--seconds", type=whole_number(1), default=60, help="time budget of each target (default 60)"
    )
    parser.add_argument(
        "--artifacts", type=Path, default=Path("."),
        help="folder where libFuzzer writes a crashing input (default: this folder)",
    )  # fmt: skip


def _target(text: str) -> str:
    if text not in TARGETS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fuzz target; choose from {', '.join(TARGETS)}")
    return text


@dataclass
class Outcome:
    target: str
    executions: int = 0
    seconds: float = 0.0
    coverage: str = "-"
    failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0


def fuzz_key() -> SigningKey:
    """The one key every fuzz run signs its seeds with and verifies against."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return SigningKey("k1", ed25519.Ed25519PrivateKey.from_private_bytes(FUZZ_KEY_SEED))


def seed_corpus(target: str, folder: Path) -> None:
    """Inputs that reach deep from the first run: genuine, forged, expired and foreign vouchers."""
    from shopcardd_voucher import issue

    key, stranger = fuzz_key(), SigningKey.generate("k1")
    tokens = [
        issue(key, deal="d1", merchant=MERCHANT, user="u1", ttl=3600, now=NOW),
        issue(key, deal="d2", merchant=MERCHANT, user="u2", ttl=60, now=NOW - 7200),
        issue(key, deal="d3", merchant="m-other", user="u3", ttl=3600, now=NOW),
        issue(stranger, deal="d4", merchant=MERCHANT, user="u4", ttl=3600, now=NOW),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    if target == "voucher":
        for index, token in enumerate(tokens):
            (folder / f"seed-{index}").write_text(token)
        return
    from .synthetic import Look, render

    for index, token in enumerate(tokens):
        frame = render(token, Look(size=(160, 160), fill=0.98, inverted=index == 1, noise=3, seed=index))
        (folder / f"seed-{index}").write_bytes(frame.shape[1].to_bytes(2, "big") + frame.tobytes())


STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.MULTILINE)
COVERAGE = re.compile(r"cov: (\d+) ft: (\d+)")


def run_libfuzzer(target: str, seconds: int, artifacts: Path) -> Outcome:
    with tempfile.TemporaryDirectory(prefix=f"shopcardd-fuzz-{target}-") as tmp:
        corpus = Path(tmp) / "corpus"
        seed_corpus(target, corpus)
        artifacts.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "shopcardd_bench.fuzz_targets", target,
            f"-max_total_time={seconds}", f"-max_len={MAX_LEN}", "-print_final_stats=1",
            f"-artifact_prefix={artifacts.resolve()}/{target}-", "-timeout=10", "-rss_limit_mb=1024",
            str(corpus),
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 600)
        elapsed = time.perf_counter() - start
    stats = {name: int(value) for name, value in STAT.findall(done.stderr)}
    covered = COVERAGE.findall(done.stderr)
    outcome = Outcome(target, stats.get("number_of_executed_units", 0), elapsed)
    if covered:
        outcome.coverage = f"cov {covered[-1][0]}, ft {covered[-1][1]}"
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if line.strip()][-25:]
        outcome.failures.append("\n".join(tail))
    return outcome


def run_schemathesis(seconds: int) -> Outcome:
    """Every operation of the schema in turn, a batch of generated requests each, until the time is up."""
    import schemathesis
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    from shopcardd_backend.app import create_app
    from shopcardd_backend.identity import dev_identity_key, mint_user_token, register_merchant
    from shopcardd_backend.settings import Settings

    checks = [
        not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
    ]  # fmt: skip
    outcome = Outcome("api")
    with tempfile.TemporaryDirectory(prefix="shopcardd-fuzz-api-") as tmp:
        config = Settings(  # the embedded profile, whatever this shell's SHOPCARDD_* variables say
            _env_file=None, data_dir=Path(tmp), redis_url=None, mongodb_uri=None, amqp_url=None,
            user_jwks=None, user_secret=None, user_audience=None, environment="development",
        )  # type: ignore[call-arg]  # fmt: skip
        with TestClient(create_app(config), raise_server_exceptions=False) as client:
            api_key = register_merchant(client.app.state.runtime.store, "m-fuzz")  # type: ignore[attr-defined]
            token = mint_user_token(dev_identity_key(config), config.user_issuer, "u-fuzz", 3600)
            auth = {"X-API-Key": api_key, "Authorization": f"Bearer {token}"}
            schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
            operations = [result.ok() for result in schema.get_all_operations()]
            deadline = time.perf_counter() + seconds
            start = time.perf_counter()
            seen: set[str] = set()

            deal = client.post(
                "/v1/deals",
                json={"title": "Fuzzed", "stock": 50, "per_user_limit": 50, "voucher_ttl_seconds": 600},
                headers=auth,
            ).json()["deal_id"]

            def call(case: Any) -> None:
                if "deal_id" in (case.path_parameters or {}) and outcome.executions % 2:
                    case.path_parameters["deal_id"] = deal  # every other request reaches a real deal
                kwargs = case.as_transport_kwargs(base_url="http://testserver")
                kwargs["headers"] = {**(kwargs.get("headers") or {}), **auth}
                response = client.request(**_httpx_kwargs(kwargs))
                outcome.executions += 1
                case.validate_response(response, checks=checks, headers=kwargs["headers"])

            while time.perf_counter() < deadline:
                for operation in operations:
                    test = settings(
                        max_examples=25, deadline=None, database=None, derandomize=False,
                        suppress_health_check=list(HealthCheck),
                    )(given(case=operation.as_strategy())(call))  # fmt: skip
                    try:
                        test()
                    except Exception as exc:  # a failed check: report it once, go on with the others
                        why = f"{operation.label}: {exc}"
                        if operation.label not in seen:
                            seen.add(operation.label)
                            outcome.failures.append(why[:3000])
                    if time.perf_counter() >= deadline:
                        break
            outcome.seconds = time.perf_counter() - start
            outcome.coverage = f"{len(operations)} operations"
    return outcome


def _httpx_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """schemathesis's transport arguments (requests-style) as httpx's ``Client.request`` takes them."""
    allowed = {"method", "url", "params", "headers", "cookies", "content", "data", "files", "json"}
    moved = {key: value for key, value in kwargs.items() if key in allowed}
    if isinstance(moved.get("data"), bytes | str):
        moved["content"] = moved.pop("data")
    return moved


def run(args: argparse.Namespace) -> int:
    outcomes = []
    for target in args.target or TARGETS:
        if target == "api":
            outcomes.append(run_schemathesis(args.seconds))
        else:
            outcomes.append(run_libfuzzer(target, args.seconds, args.artifacts))
    print(f"shopcardd-bench fuzz: {args.seconds} s per target")
    header = f"{'target':<8} {'executions':>11} {'per second':>11}  {'coverage':<22} failures"
    print(header)
    print("-" * len(header))
    for outcome in outcomes:
        print(
            f"{outcome.target:<8} {outcome.executions:>11,} {outcome.rate:>11,.1f}  {outcome.coverage:<22}"
            f" {len(outcome.failures)}"
        )
    for outcome in outcomes:
        for failure in outcome.failures:
            print(f"\n{outcome.target}: {failure}", file=sys.stderr)
    return 1 if any(outcome.failures for outcome in outcomes) else 0
