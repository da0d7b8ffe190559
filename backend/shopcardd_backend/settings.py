"""The backend's settings: one typed object read from ``SHOPCARDD_*`` environment variables.

Built by ``Settings.from_env()`` in ``main()`` (or a worker process's app factory), never at
import. No settings at all is the embedded profile: SQLite gate and store under
``SHOPCARDD_DATA_DIR``. ``SHOPCARDD_REDIS_URL`` moves the claim gate to Redis,
``SHOPCARDD_MONGODB_URI`` the document store to MongoDB; ``SHOPCARDD_AMQP_URL`` is read here
and used by the relay and workers. The notify worker's channels (``SHOPCARDD_SMTP_URL`` with
``SHOPCARDD_MAIL_FROM``, ``SHOPCARDD_SMS_URL`` with ``SHOPCARDD_SMS_API_KEY``) are each off
until both of their settings are given.

Every mistake an operator can make in a variable is found here, before anything starts, and
reported as ``SettingsError``: one line naming the variable (the commands exit 2 with it). A
misspelt name is refused too, since an ignored ``SHOPCARDD_REDIS_ULR`` would quietly run the
embedded profile.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shopcardd_voucher import Algorithm

ENV_PREFIX = "SHOPCARDD_"
PLACEHOLDER_SECRETS = frozenset({"changethis", "changeme", "secret", "password", "dev", "development"})
MIN_SECRET_BYTES = 32
OTHER_VARIABLES = frozenset(
    {
        "SHOPCARDD_DEVICE_CONFIG",  # the counter device's configuration file (shopcardd-device)
        "SHOPCARDD_API_KEY",  # the merchant's API key, for shopcardd-provision enroll
        "SHOPCARDD_TEST_REDIS_URL",  # the Redis of the test suite and the claims benchmark
        "SHOPCARDD_TEST_AMQP_URL",  # the RabbitMQ of the test suite
    }
)
"""``SHOPCARDD_*`` variables that are not backend settings but may be set where it runs."""
URL_SCHEMES = {
    "redis_url": ("redis://", "rediss://", "unix://"),
    "mongodb_uri": ("mongodb://", "mongodb+srv://"),
    "amqp_url": ("amqp://", "amqps://"),
    "sms_url": ("https://", "http://"),
}
SMTP_SCHEMES = {"smtp": False, "smtp+starttls": True}
"""The schemes of ``SHOPCARDD_SMTP_URL``, and whether each upgrades the connection with STARTTLS."""
SMTP_DEFAULT_PORTS = {False: 25, True: 587}
MAILBOX = re.compile(r"[^@\s<>]+@[^@\s<>]+")


class SettingsError(ValueError):
    """A setting that cannot work; the message names the variable and says why, in one line."""


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """The mail server of ``SHOPCARDD_SMTP_URL``, taken apart."""

    host: str
    port: int
    starttls: bool
    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)


def parse_smtp_url(url: str) -> SmtpServer:
    """``smtp://[user:password@]host[:port]`` (or ``smtp+starttls://``); ``ValueError`` says what
    is wrong without echoing the URL (it may hold a password)."""
    form = "smtp://[user:password@]host[:port] or smtp+starttls://..."
    parts = urlsplit(url)
    if parts.scheme not in SMTP_SCHEMES:
        raise ValueError(f"must be {form}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    if not parts.hostname:
        raise ValueError(f"names no mail server: {form}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"must hold nothing after the port: {form}")
    if (parts.username is None) != (parts.password is None):
        raise ValueError("give both a user and a password (smtp://user:password@host), or neither")
    starttls = SMTP_SCHEMES[parts.scheme]
    return SmtpServer(
        parts.hostname,
        port or SMTP_DEFAULT_PORTS[starttls],
        starttls,
        None if parts.username is None else unquote(parts.username),
        None if parts.password is None else SecretStr(unquote(parts.password)),
    )


def redis_node_urls(value: str) -> list[str]:
    """The node URLs of ``SHOPCARDD_REDIS_URL``: one URL, or a comma-separated list of a Redis
    Cluster's nodes, so that a process starts while any one of them is down. The first URL's
    options (password, TLS, db) serve every node, so the list must agree on scheme and
    credentials. ``ValueError`` says what is wrong without echoing a URL (it may hold a password)."""
    urls = [url.strip() for url in value.split(",")]
    if len(urls) == 1:
        return [value]
    if not all(urls):
        raise ValueError("the list of node URLs holds an empty item (a comma too many?)")
    schemes = URL_SCHEMES["redis_url"][:2]  # a cluster's nodes are reached over TCP
    if not all(url.startswith(schemes) for url in urls):
        raise ValueError(
            f"each node URL of the list must start with {' or '.join(schemes)} (a comma separates "
            "node URLs: write one in a password as %2C)"
        )
    parts = [urlsplit(url) for url in urls]
    if len({(part.scheme, part.username, part.password) for part in parts}) > 1:
        raise ValueError(
            "the node URLs must share one scheme and one user and password (the first's serve all nodes)"
        )
    for part in parts:
        try:
            port = part.port
        except ValueError:
            port = -1
        if not part.hostname or (port is not None and not 1 <= port <= 65535):
            raise ValueError("each node URL of the list must be redis://[user:password@]HOST[:PORT]")
    return urls


def uri_database(uri: str) -> str:
    """The database a MongoDB URI names after its hosts (``mongodb://h1,h2/shop?...`` -> ``shop``),
    or ``""``. The hosts part never holds a ``/`` (the URI format has passwords percent-encoded)."""
    return unquote(urlsplit(uri).path.lstrip("/"))


def parse_networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The addresses and networks of a comma-separated list (``10.0.0.0/8, ::1``); ``ValueError``
    names the first entry that is neither."""
    networks = []
    for entry in filter(None, (part.strip() for part in value.split(","))):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry[:60]!r} is not an IP address or network (10.0.0.0/8, ::1)") from None
    return tuple(networks)


def amqp_node_urls(value: str) -> list[str]:
    """The node URLs of ``SHOPCARDD_AMQP_URL``: one, or a RabbitMQ cluster's nodes comma-separated,
    so that a relay or worker whose node stops reconnects to another. ``ValueError`` for an empty
    item, another scheme or nodes of different vhosts; no URL is echoed (they hold the password)."""
    nodes = [item.strip() for item in value.split(",")]
    for number, node in enumerate(nodes, 1):
        where = f"item {number} of {len(nodes)}" if len(nodes) > 1 else "the URL"
        if not node:
            raise ValueError(f"{where} is empty: name the nodes' URLs separated by single commas")
        if not node.startswith(URL_SCHEMES["amqp_url"]):
            raise ValueError(f"{where} must start with amqp:// or amqps:// (a comma in a password is %2C)")
    if len({unquote(urlsplit(node).path[1:].split("/")[0]) or "/" for node in nodes}) > 1:
        raise ValueError("the nodes' URLs name different vhosts: one cluster's nodes share one vhost")
    return nodes


def load_jwks(value: str) -> dict[str, Any]:
    """The JWKS that ``SHOPCARDD_USER_JWKS`` gives: the JSON itself, or the path of a file holding it."""
    if value.lstrip().startswith("{"):
        text = value
    else:
        try:
            text = Path(value).read_text()
        except OSError as exc:
            raise SettingsError(
                f"{env_name('user_jwks')}: cannot read the file {value!r} ({exc.strerror}); "
                "give a JWKS file path or the JSON itself"
            ) from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise SettingsError(f"{env_name('user_jwks')} is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list) or not document["keys"]:
        raise SettingsError(f'{env_name("user_jwks")} must be a JWKS: {{"keys": [at least one key]}}')
    return document


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"
    """``production`` refuses development conveniences: the dev identity key, placeholder secrets."""
    data_dir: Path = Path("data")
    """Embedded profile files, the voucher signing keys and the development identity key."""

    redis_url: str | None = None
    redis_cluster: bool = False
    """``SHOPCARDD_REDIS_URL`` names a Redis Cluster: one node or, better, a comma-separated list of
    several, since a process starts from any of them that answers (the client learns the others)."""
    redis_deal_buckets: int = Field(default=1, ge=1, le=256)
    """Buckets a new deal's stock is split into (a Redis Cluster slot each: a hot deal then uses
    every primary); fixed per deal when it is created. 1: one slot per deal."""
    redis_prefix: str = "shopcardd"
    """Prefix of every Redis key this deployment writes (tests use one of their own): non-empty,
    no braces (a ``{...}`` in it would become the keys' cluster hash tag) and no whitespace."""
    mongodb_uri: str | None = None
    mongodb_database: str = "shopcardd"
    """The database of the document store: this setting, else the one the URI names
    (``mongodb://host/shop``), else ``shopcardd``."""
    mongodb_read_preference: Literal[
        "primary", "primaryPreferred", "secondary", "secondaryPreferred", "nearest"
    ] = "primary"
    """Where the reads that may be a little stale go (a deal's stats, the lists of deals and of
    conflicts): a replica set's secondaries can take them off the primary, which the persist worker
    keeps busy in a sale. Every other read (a claim's deal, a device, a voucher) stays on the
    primary, since what it reads was written a moment before."""
    amqp_url: str | None = None
    """RabbitMQ: one node's URL, or every node of a cluster comma-separated (``amqp://u:p@h1/vh,
    amqp://u:p@h2/vh``): a relay or worker then reconnects to another node when its own stops."""

    smtp_url: SecretStr | None = None
    """The mail server of customer emails: ``smtp://[user:password@]host[:port]`` (port 25), or
    ``smtp+starttls://`` (port 587) to upgrade to TLS before logging in. Unset: no emails."""
    mail_from: str | None = None
    """The sender of customer emails (``ShopCardd <vouchers@example.com>``); needed with ``smtp_url``."""
    sms_url: str | None = None
    """The SMS provider's send endpoint: ``{"to", "text"}`` is POSTed to it as JSON. Unset: no SMS."""
    sms_api_key: SecretStr | None = None
    """Sent to the SMS provider as ``Authorization: Bearer KEY``; needed with ``sms_url``."""

    user_issuer: str = "shopcardd-dev"
    """``iss`` every user token must carry."""
    user_jwks: str | None = None
    """The identity provider's public keys: a JWKS file path or the JWKS JSON itself."""
    user_secret: SecretStr | None = None
    """An HS256 secret shared with the identity provider (instead of ``user_jwks``)."""
    user_audience: str | None = None
    """The ``aud`` every user token must carry (this API's client id at the identity provider), so a
    token the provider issued to another application is refused. Required in production."""
    user_token_ttl_seconds: int = Field(default=86_400, gt=0)
    """Lifetime of the development tokens ``shopcardd-backend user-token`` mints."""
    user_token_cache_size: int = Field(default=100_000, ge=0)
    """Verified user tokens remembered per process until they expire (0: no cache)."""

    signing_alg: Algorithm = "EdDSA"
    """Algorithm of the voucher signing key generated on first start."""
    signing_kid: str | None = None
    """Which key of ``DATA_DIR/keys`` signs; default the newest one with a private key."""

    device_audience: str | None = None
    """The ``aud`` a device's sync token must carry: the backend URL the counters are configured
    with (``backend_url``, no trailing ``/``). Required in production; unset in development, the
    URL the request reached this API at, which follows the client's ``Host`` header."""
    keyset_valid_seconds: int = Field(default=7 * 86_400, gt=0)
    """How long a key set sent at sync counts as fresh on the device (its ``valid_until``)."""

    claim_rate_per_user: int = 30
    """Claim requests one user may send per window (``claim_rate_window_seconds``); 0: no limit.
    A person tapping "claim" never sends 30 a minute; a script does."""
    claim_rate_per_address: int = 3000
    """Claim requests one client address (an IPv6 /64) may send per window; 0: no limit. Far
    above the per-user figure: thousands of phones share a carrier's NAT address in a sale."""
    claim_rate_window_seconds: int = Field(default=60, ge=1, le=86_400)
    """The fixed window both limits count in (aligned to the epoch: a minute by default)."""
    trusted_proxies: str = "127.0.0.1,::1"
    """Peers whose ``X-Forwarded-For`` names the client: addresses or networks, comma-separated
    (the default: the nginx site on this machine); empty: nobody's. Every other peer is the
    client itself, whatever it sends."""

    console_session_seconds: int = Field(default=8 * 3600, ge=1, le=30 * 86_400)
    """How long a sign-in to the merchant's console lasts (``/console``); sign-out ends it sooner."""
    console_sign_in_attempts: int = Field(default=10, ge=1)
    """Wrong API keys one client address may try at the console's sign-in per window
    (``console_sign_in_window_seconds``) before it must wait for the window's end."""
    console_sign_in_window_seconds: int = Field(default=300, ge=1, le=86_400)

    max_body_bytes: int = Field(default=16 * 1024, gt=0)
    body_timeout_seconds: float = Field(default=10.0, gt=0)
    """Time a client has to send a request's whole body; a slower one gets 408 and is closed."""
    retry_after_seconds: int = Field(default=1, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    access_log: bool = False
    """One JSON line per request from uvicorn (off by default: costly at claim rates)."""

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of this process's environment; ``SettingsError`` says what is wrong."""
        check_variable_names(os.environ)
        try:
            return cls()
        except ValidationError as exc:
            raise SettingsError(describe_errors(exc)) from None

    @property
    def profile(self) -> str:
        gate = "redis" if self.redis_url else "sqlite"
        store = "mongo" if self.mongodb_uri else "sqlite"
        return "embedded" if gate == store == "sqlite" else f"scaled (gate {gate}, store {store})"

    @property
    def smtp_server(self) -> SmtpServer | None:
        return None if self.smtp_url is None else parse_smtp_url(self.smtp_url.get_secret_value())

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def trust_dir(self) -> Path:
        return self.data_dir / "trust"

    @property
    def identity_dir(self) -> Path:
        return self.data_dir / "identity"

    @property
    def uses_dev_identity(self) -> bool:
        return self.user_jwks is None and self.user_secret is None

    def make_data_dir(self) -> Path:
        """``data_dir``, made if missing; ``SettingsError`` when it is not a folder we can write in."""
        where = f"{env_name('data_dir')}={self.data_dir}"
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise SettingsError(f"{where} is not a folder")
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(f"{where}: cannot make the folder ({exc.strerror})") from None
        if not os.access(self.data_dir, os.W_OK | os.X_OK):
            raise SettingsError(f"{where}: the folder is not writable")
        return self.data_dir

    @model_validator(mode="before")
    @classmethod
    def _database_named_by_the_uri(cls, data: Any) -> Any:
        """An operator who writes ``mongodb://host/shop`` means the database ``shop``."""
        if isinstance(data, dict) and not data.get("mongodb_database") and data.get("mongodb_uri"):
            named = uri_database(str(data["mongodb_uri"]))
            if named:
                return {**data, "mongodb_database": named}
        return data

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redis_url", "mongodb_uri", "amqp_url", "sms_url")
    @classmethod
    def _known_scheme(cls, value: str | None, info: ValidationInfo) -> str | None:
        schemes = URL_SCHEMES[str(info.field_name)]
        if value is not None and not value.startswith(schemes):
            raise ValueError(f"must start with {' or '.join(schemes)}")  # no echo: URLs hold passwords
        if value is not None and info.field_name == "redis_url":
            redis_node_urls(value)  # each URL of a list of a cluster's nodes
        return value

    @model_validator(mode="after")
    def _node_list_on_a_cluster(self) -> Self:
        if self.redis_url and not self.redis_cluster and len(redis_node_urls(self.redis_url)) > 1:
            raise ValueError(
                "SHOPCARDD_REDIS_URL names several nodes, which only a Redis Cluster has: set "
                "SHOPCARDD_REDIS_CLUSTER=true, or give one URL"
            )
        return self

    @field_validator("smtp_url")
    @classmethod
    def _usable_smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_smtp_url(value.get_secret_value())
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_nodes(cls, value: str | None) -> str | None:
        if value is not None:
            amqp_node_urls(value)
        return value

    @field_validator("mail_from")
    @classmethod
    def _one_mailbox(cls, value: str | None) -> str | None:
        if value is not None and (not MAILBOX.fullmatch(parseaddr(value)[1]) or not value.isprintable()):
            raise ValueError("must be one address: vouchers@example.com or ShopCardd <vouchers@example.com>")
        return value

    @field_validator("redis_prefix")
    @classmethod
    def _usable_prefix(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty (the keys of every deployment would mix)")
        if "{" in value or "}" in value:
            raise ValueError("must not hold '{' or '}' (they would move the keys' cluster hash tag)")
        if any(ch.isspace() or not ch.isprintable() for ch in value):
            raise ValueError("must not hold whitespace or control characters")
        return value

    @field_validator("claim_rate_per_user", "claim_rate_per_address")
    @classmethod
    def _limit_or_off(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 (no limit) or a number of claims per window")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return parse_networks(self.trusted_proxies)

    @field_validator("user_jwks")
    @classmethod
    def _readable_jwks(cls, value: str | None) -> str | None:
        if value is not None:
            load_jwks(value)
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Self:
        if self.user_jwks is not None and self.user_secret is not None:
            raise ValueError("set SHOPCARDD_USER_JWKS or SHOPCARDD_USER_SECRET, not both")
        for channel, needed in (("smtp_url", "mail_from"), ("sms_url", "sms_api_key")):
            if (getattr(self, channel) is None) != (getattr(self, needed) is None):
                raise ValueError(
                    f"set {env_name(channel)} and {env_name(needed)} together, or neither "
                    f"(the {'email' if channel == 'smtp_url' else 'SMS'} channel needs both)"
                )
        if self.environment != "production":
            return self
        if self.uses_dev_identity:
            raise ValueError(
                "production needs the identity provider's keys: set SHOPCARDD_USER_JWKS or "
                "SHOPCARDD_USER_SECRET (the development identity key is for development only)"
            )
        if self.user_secret is not None:
            secret = self.user_secret.get_secret_value()
            if secret.lower() in PLACEHOLDER_SECRETS or len(secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"SHOPCARDD_USER_SECRET is a placeholder or shorter than {MIN_SECRET_BYTES} bytes; "
                    "refused in production"
                )
        sms_api_key = self.sms_api_key.get_secret_value() if self.sms_api_key is not None else None
        if sms_api_key is not None and sms_api_key.lower() in PLACEHOLDER_SECRETS:
            raise ValueError("SHOPCARDD_SMS_API_KEY is a placeholder; refused in production")
        if not self.user_audience:
            raise ValueError(
                "production needs SHOPCARDD_USER_AUDIENCE: the aud of this API's user tokens (its client id "
                "at the identity provider), so tokens issued to other applications are refused"
            )
        if not self.device_audience:
            raise ValueError(
                "production needs SHOPCARDD_DEVICE_AUDIENCE: the backend URL the counters sync with "
                "(their backend_url), so a device token's audience does not follow the Host header"
            )
        return self


def known_variables() -> frozenset[str]:
    return frozenset(env_name(field) for field in Settings.model_fields) | OTHER_VARIABLES


def check_variable_names(names: Iterable[str]) -> None:
    """``SettingsError`` for any ``SHOPCARDD_*`` name that is no setting, with the closest known one."""
    known = known_variables()
    unknown = sorted(n for n in names if n.upper().startswith(ENV_PREFIX) and n.upper() not in known)
    if not unknown:
        return
    problems = []
    for name in unknown:
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1)
        hint = f"did you mean {close[0]}?" if close else "see docs/backend-api.md for the settings"
        problems.append(f"unknown variable {name} ({hint})")
    raise SettingsError("; ".join(problems))


def describe_errors(exc: ValidationError) -> str:
    """Pydantic's errors as one line, each named by its environment variable (values not echoed:
    they may be secrets)."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        loc = error["loc"]
        named = not loc or message.startswith(ENV_PREFIX)
        problems.append(message if named else f"{env_name(str(loc[0]))}: {message}")
    return "; ".join(problems)
