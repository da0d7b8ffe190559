"""``shopcardd-backend`` as an operator types it: serve, merchant create, user-token."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from logschema import log_entry
from shopcardd_backend.app import create_app
from shopcardd_backend.stores.base import NoticeOutcome
from shopcardd_bench.served import running_backend
from shopcardd_voucher import KeySet, Reason, verify
from waiting import until

from .conftest import Api, assert_problem, backend, backend_in_process, build_settings, make_identity_key


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """``shopcardd-backend serve --workers 2`` on a free port, ready; it must stop cleanly."""
    with running_backend(env, tmp_path / "serve.log", workers=2) as backend:
        yield backend.url
    assert backend.process.returncode == 0
    # every log line, uvicorn's too, is one JSON object in the schema the device writes too
    log = [log_entry(line, "shopcardd-backend") for line in (tmp_path / "serve.log").read_text().splitlines()]
    assert "Application shutdown complete." in [entry["message"] for entry in log]


def _merchant_key(env: dict[str, str], merchant: str) -> str:
    """``merchant create``'s API key: the last line it prints."""
    return backend(env, "merchant", "create", "--merchant", merchant).stdout.strip().splitlines()[-1]


def _create_deal(server: str, api_key: str, title: str, stock: int) -> str:
    body = {"title": title, "stock": stock, "per_user_limit": 1, "voucher_ttl_seconds": 600}
    return httpx.post(f"{server}/v1/deals", json=body, headers={"X-API-Key": api_key}).json()["deal_id"]


def _claim(server: str, deal: str, token: str, key: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    return httpx.post(f"{server}/v1/deals/{deal}/claims", headers=headers)


def test_commands_share_the_stores_of_the_server(env: dict[str, str], server: str, tmp_path: Path) -> None:
    api_key = _merchant_key(env, "cafe")
    tokens = backend(env, "user-token", "alice", "bob").stdout.split()
    assert len(tokens) == 2
    deal = _create_deal(server, api_key, "2 for 1", stock=2)
    claims = [_claim(server, deal, token, "k1") for token in tokens]
    assert [c.status_code for c in claims] == [201, 201]
    keys = KeySet.from_jwks(httpx.get(f"{server}/.well-known/jwks.json").json())
    assert all(verify(c.json()["token"], keys, merchant="cafe").reason is Reason.ACCEPTED for c in claims)
    # Both worker processes sign with the one key made on first start, kept private.
    private = list((tmp_path / "data" / "keys").glob("*.private.pem"))
    assert len(private) == 1 and len(keys) == 1
    assert stat.S_IMODE(private[0].stat().st_mode) == 0o600
    metrics = httpx.get(f"{server}/metrics").text
    assert 'shopcardd_claims_total{outcome="issued"} 2.0' in metrics


def test_merchant_create_shows_the_key_once_and_refuses_a_second_time(env: dict[str, str]) -> None:
    first = backend(env, "merchant", "create", "--merchant", "cafe")
    key = first.stdout.strip().splitlines()[-1]
    assert key.startswith("sck_") and len(key) > 40
    again = backend(env, "merchant", "create", "--merchant", "cafe", expect=1)
    assert "already exists" in again.stderr
    assert key not in again.stdout
    backend(env, "merchant", "create", "--merchant", "bad id", expect=2)


BAD_ARGUMENTS = [
    ["merchant", "create", "--merchant", "bad id"],
    ["merchant", "create", "--merchant", ""],
    ["merchant", "create", "--merchant", "m" * 65],
    ["user-token", "bad id"],
    ["deal", "rebuild", ""],
    ["deal", "rebuild", "{x}"],
    ["serve", "--port", "0"],
]


@pytest.mark.parametrize("argv", BAD_ARGUMENTS, ids=lambda argv: "-".join(argv[:2]) + f"-{argv[-1][:8]!r}")
def test_a_bad_argument_is_a_usage_error_exit_2_whatever_the_command(
    env: dict[str, str], tmp_path: Path, argv: list[str]
) -> None:
    refused = backend(env, *argv, expect=2)
    assert "error: argument" in refused.stderr and "Traceback" not in refused.stderr
    assert not refused.stdout
    assert not (tmp_path / "data").exists(), "refused before any store or key is opened"


def test_user_token_prints_one_token_per_user_in_order(env: dict[str, str]) -> None:
    import jwt

    make_identity_key(env)
    tokens = backend(env, "user-token", "u1", "u2", "u3").stdout.splitlines()
    assert [jwt.decode(t, options={"verify_signature": False})["sub"] for t in tokens] == ["u1", "u2", "u3"]


def test_queue_commands_without_rabbitmq_say_what_to_set(env: dict[str, str]) -> None:
    for command in (["relay"], ["worker", "persist"]):
        refused = backend(env, *command, expect=2).stderr
        assert "SHOPCARDD_AMQP_URL is not set" in refused and len(refused.splitlines()) == 1


STOP_WHILE_WAITING = """
import signal, sys
from shopcardd_backend.cli.queues import stop_on_signals
stop = stop_on_signals()
with stop._cond:  # as inside stop.wait(): the main thread holds the event's lock
    signal.raise_signal(signal.SIGTERM)  # the handler runs now, in this thread
sys.exit(0 if stop.wait(10) else 3)
"""


def test_sigterm_during_the_wait_for_work_still_stops_the_command() -> None:
    """The relay's loop waits on its stop event 20 times a second; a SIGTERM whose handler ran
    while that wait held the event's lock once hung the relay for good (seen in CI)."""
    proc = subprocess.run([sys.executable, "-c", STOP_WHILE_WAITING], timeout=30, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]


def test_production_refuses_the_development_identity(env: dict[str, str]) -> None:
    env = {**env, "SHOPCARDD_ENVIRONMENT": "production"}
    refused = backend(env, "user-token", "alice", expect=2)
    assert "SHOPCARDD_USER_JWKS" in refused.stderr
    weak = backend(
        {**env, "SHOPCARDD_USER_SECRET": "changethis"}, "merchant", "create", "--merchant", "m", expect=2
    )
    assert "placeholder" in weak.stderr


def test_deal_rebuild_leaves_a_held_deal_alone_and_names_an_unknown_one(
    env: dict[str, str], server: str
) -> None:
    deal = _create_deal(server, _merchant_key(env, "cafe"), "tea", stock=3)
    (token,) = backend(env, "user-token", "alice").stdout.split()
    claim = _claim(server, deal, token, "k")
    assert claim.status_code == 201
    assert "with 2 vouchers left" in backend(env, "deal", "rebuild", deal).stdout
    missing = backend(env, "deal", "rebuild", "no-such-deal", expect=1)
    assert "no deal 'no-such-deal'" in missing.stderr


def test_deal_rebuild_of_a_lost_deal_counts_store_and_outbox_and_keeps_a_cancel(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The gate lost its deals (here: the embedded gate's file is gone): until ``deal rebuild``,
    reads, cancels and claims of them answer 503; the rebuild says what it counted; a deal
    cancelled meanwhile comes back cancelled."""
    settings = build_settings(tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        key = api.merchant_key("m1")
        deal, closed = (api.create_deal(key, stock=5)["deal_id"] for _ in range(2))
    for name in ("gate.sqlite3", "gate.sqlite3-wal", "gate.sqlite3-shm"):
        (tmp_path / "data" / name).unlink(missing_ok=True)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        assert_problem(client.get(f"/v1/deals/{deal}"), 503, "unavailable")
        assert_problem(
            client.post(f"/v1/deals/{closed}/cancel", headers={"X-API-Key": key}), 503, "unavailable"
        )
        assert_problem(api.claim(closed, api.user_token("alice"), "k"), 503, "unavailable")

    help_text = " ".join(backend(env, "deal", "rebuild", "--help").stdout.split())
    assert "--force" in help_text and "outbox" in help_text

    rebuilt = backend(env, "deal", "rebuild", deal).stdout
    assert "with 5 vouchers left (0 vouchers in the store, 0 more still in the outbox)" in rebuilt
    assert "with 5 vouchers left" in backend(env, "deal", "rebuild", closed, "--force").stdout
    assert "left alone" in backend(env, "deal", "rebuild", deal).stdout  # held now: no --force needed
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        assert api.claim(deal, api.user_token("alice"), "k").status_code == 201
        assert_problem(api.claim(closed, api.user_token("alice"), "k"), 403, "sale_not_open")
        read = client.get(f"/v1/deals/{closed}").json()
        assert (read["status"], read["stock_left"]) == ("cancelled", 5)


BAD_SETTINGS = [
    ("SHOPCARDD_LOG_LEVEL", "LOUD"),
    ("SHOPCARDD_REDIS_URL", "garbage"),
    ("SHOPCARDD_MONGODB_URI", "garbage"),
    ("SHOPCARDD_USER_JWKS", "/nope"),
    ("SHOPCARDD_USER_JWKS", "{bad"),
    ("SHOPCARDD_DATA_DIR", "/proc/zz"),
    ("SHOPCARDD_DATA_DIR", "{tmp}/a-file"),
    ("SHOPCARDD_REDIS_PREFIX", ""),
    ("SHOPCARDD_REDIS_PREFIX", "{x}"),
    ("SHOPCARDD_REDIS_PREFIX", "shop}cardd"),
    ("SHOPCARDD_REDIS_PREFIX", "shop cardd"),
    ("SHOPCARDD_CLAIM_RATE_PER_ADDRESS", "-1"),
    ("SHOPCARDD_TRUSTED_PROXIES", "127.0.0.1, nginx"),
]
COMMANDS = [
    ["serve", "--port", "1"],  # never reached: the settings are refused first
    ["merchant", "create", "--merchant", "m"],
    ["user-token", "alice"],
    ["deal", "rebuild", "d1"],
]


def _one_line_naming(stderr: str, variable: str) -> None:
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert variable in stderr


@pytest.mark.parametrize(("variable", "value"), BAD_SETTINGS)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda argv: argv[0])
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(
    env: dict[str, str], tmp_path: Path, variable: str, value: str, command: list[str]
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    refused = backend_in_process({**env, variable: value.replace("{tmp}", str(tmp_path))}, *command, expect=2)
    _one_line_naming(refused.stderr, variable)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SHOPCARDD_USER_JWKS", '{"keys": [{"kty": "nonsense", "kid": "idp-1"}]}'),
        ("SHOPCARDD_SIGNING_KID", "k9"),
    ],
)
def test_serve_checks_its_keys_before_uvicorn_starts(
    env: dict[str, str], unused_port: int, variable: str, value: str
) -> None:
    refused = backend({**env, variable: value}, "serve", "--port", str(unused_port), expect=2)
    _one_line_naming(refused.stderr, variable)


def test_an_unreachable_mongodb_at_start_is_one_line_exit_1(env: dict[str, str], unused_port: int) -> None:
    env = {**env, "SHOPCARDD_MONGODB_URI": f"mongodb://127.0.0.1:{unused_port}/?directConnection=true"}
    for command in (["serve", "--port", str(unused_port)], ["merchant", "create", "--merchant", "m"]):
        refused = backend(env, *command, expect=1)
        _one_line_naming(refused.stderr, "MongoDB")
        assert "does not answer" in refused.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_port_in_use_is_one_line_exit_1(env: dict[str, str], workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = backend(env, "serve", "--port", str(port), "--workers", workers, expect=1)
    assert refused.stderr.strip() == (
        f"shopcardd-backend: port {port} on 127.0.0.1 is already in use "
        "(another server listens there); choose another with --port"
    )
    assert not refused.stdout


def test_a_misspelt_variable_is_refused_with_the_closest_name(env: dict[str, str]) -> None:
    refused = backend({**env, "SHOPCARDD_REDIS_ULR": "redis://127.0.0.1:6379/0"}, "user-token", "a", expect=2)
    _one_line_naming(refused.stderr, "SHOPCARDD_REDIS_ULR")
    assert "did you mean SHOPCARDD_REDIS_URL?" in refused.stderr
    # Variables of the tests, the benchmark and the counter device are not the backend's, but allowed.
    others = {"SHOPCARDD_TEST_REDIS_URL": "redis://x", "SHOPCARDD_DEVICE_CONFIG": "/etc/x.toml"}
    make_identity_key(env)
    assert backend({**env, **others}, "user-token", "a").stdout.strip()


OUT_OF_RANGE = [
    ["--port", "99999"],
    ["--port", "0"],
    ["--port", "http"],
    ["--workers", "0"],
    ["--workers", "-2"],
]


@pytest.mark.parametrize("argv", OUT_OF_RANGE)
def test_serve_refuses_ports_and_worker_counts_out_of_range(env: dict[str, str], argv: list[str]) -> None:
    refused = backend(env, "serve", *argv, expect=2)
    assert f"argument {argv[0]}" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    "argv",
    [["", "bob"], ["x" * 3000], ["has space"], ["tab\there"], ["a", "--ttl", "0"], ["a", "--ttl", "-60"]],
    ids=["empty", "3000-characters", "space", "tab", "ttl-0", "ttl-negative"],
)
def test_user_token_refuses_what_the_api_would_refuse(env: dict[str, str], argv: list[str]) -> None:
    refused = backend(env, "user-token", *argv, expect=2)
    assert "error: argument" in refused.stderr and len(refused.stderr) < 600
    assert not refused.stdout  # not even the tokens of the good ids


def test_user_token_ttl_is_the_one_asked_for(env: dict[str, str]) -> None:
    import jwt

    make_identity_key(env)
    (token,) = backend(env, "user-token", "a", "--ttl", "5").stdout.split()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 5


def test_help_explains_profiles_and_the_queue_commands(env: dict[str, str]) -> None:
    serve = backend(env, "serve", "--help").stdout
    for variable in ("SHOPCARDD_DATA_DIR", "SHOPCARDD_REDIS_URL", "SHOPCARDD_MONGODB_URI", "./data"):
        assert variable in serve
    relay = " ".join(backend(env, "relay", "--help").stdout.split())
    for words in ("SHOPCARDD_AMQP_URL", "publisher confirms", "SIGTERM", "--lease"):
        assert words in relay, words
    worker = " ".join(backend(env, "worker", "--help").stdout.split())
    for words in ("persist", "notify", "analytics", ".parked", "SIGTERM"):
        assert words in worker, words
    bench = subprocess.run(
        [str(Path(sys.executable).with_name("shopcardd-bench")), "claims", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "``" not in bench.stdout and "shopcardd-backend serve" in " ".join(bench.stdout.split())


def test_no_deal_id_reads_as_an_option_on_the_command_line() -> None:
    """``shopcardd-backend deal rebuild ID`` must take every id the API makes as an id."""
    from shopcardd_backend.deals import new_deal_id

    assert not any(new_deal_id().startswith("-") for _ in range(5000))


def test_stats_prints_a_deals_figures_as_a_table(env: dict[str, str], tmp_path: Path) -> None:
    settings = build_settings(tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        key = api.merchant_key("m1")
        deal = api.create_deal(key, stock=5, per_user_limit=1)["deal_id"]
        token = api.user_token("alice")
        claimed = api.claim(deal, token, "k1")
        assert claimed.status_code == 201
        assert api.claim(deal, token, "k2").status_code == 409  # limit_reached
        store = client.app.state.runtime.store  # type: ignore[attr-defined]
        store.claim_notice(claimed.json()["voucher_id"], "email", deal)  # as the notify worker does
        store.record_notice(claimed.json()["voucher_id"], "email", NoticeOutcome.SENT)

        def counted() -> bool:
            totals = client.get(f"/v1/deals/{deal}/stats", headers={"X-API-Key": key}).json()["totals"]
            return (totals["issued"], totals["limit_reached"]) == (1, 1)

        until(counted, "the claim and the refusal are tallied")
    lines = backend(env, "stats", deal).stdout.splitlines()
    assert lines[1] == "status active, stock 5, left 4, vouchers issued 1, redeemed 0"
    assert lines[2] == "notices email sent 1, refused 0; sms sent 0, refused 0"
    assert lines[3].split() == [
        "minute",
        "(UTC)",
        "issued",
        "sold_out",
        "limit_reached",
        "sale_not_open",
        "stock_left",
    ]
    assert lines[4].split()[-1] == "4"  # the claim and refusal share a minute, or it is one of two
    assert lines[-1].split() == ["total", "1", "0", "1", "0", "4"]
    assert "no deal 'nope'" in backend(env, "stats", "nope", expect=1).stderr


def test_the_enrolment_key_variable_is_no_unknown_setting(env: dict[str, str]) -> None:
    """The enrolment docs say ``export SHOPCARDD_API_KEY=...``; the backend's commands still run."""
    make_identity_key(env)
    proc = backend({**env, "SHOPCARDD_API_KEY": "sck_example"}, "user-token", "alice")
    assert proc.stdout.count(".") == 2  # one token
    typo = backend({**env, "SHOPCARDD_API_KEYS": "x"}, "user-token", "alice", expect=2)
    assert "unknown variable SHOPCARDD_API_KEYS (did you mean SHOPCARDD_API_KEY?)" in typo.stderr
