"""The backend's settings: one typed object read from ``SHOPCARDD_*`` environment variables.

Built in ``main()`` (or a worker process's app factory), never at import. No settings at
all is the embedded profile: SQLite gate and store under ``SHOPCARDD_DATA_DIR``.
``SHOPCARDD_REDIS_URL`` moves the claim gate to Redis, ``SHOPCARDD_MONGODB_URI`` the document
store to MongoDB; ``SHOPCARDD_AMQP_URL`` is read here and used by the relay and workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shopcardd_voucher import Algorithm

PLACEHOLDER_SECRETS = frozenset({"changethis", "changeme", "secret", "password", "dev", "development"})
MIN_SECRET_BYTES = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOPCARDD_", extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"
    """``production`` refuses development conveniences: the dev identity key, placeholder secrets."""
    data_dir: Path = Path("data")
    """Embedded profile files, the voucher signing keys and the development identity key."""

    redis_url: str | None = None
    redis_prefix: str = "shopcardd"
    """Prefix of every Redis key this deployment writes (tests use one of their own)."""
    mongodb_uri: str | None = None
    mongodb_database: str = "shopcardd"
    amqp_url: str | None = None

    user_issuer: str = "shopcardd-dev"
    """``iss`` every user token must carry."""
    user_jwks: str | None = None
    """The identity provider's public keys: a JWKS file path or the JWKS JSON itself."""
    user_secret: SecretStr | None = None
    """An HS256 secret shared with the identity provider (instead of ``user_jwks``)."""
    user_token_ttl_seconds: int = Field(default=86_400, gt=0)
    """Lifetime of the development tokens ``shopcardd-backend user-token`` mints."""
    user_token_cache_size: int = Field(default=100_000, ge=0)
    """Verified user tokens remembered per process until they expire (0: no cache)."""

    signing_alg: Algorithm = "EdDSA"
    """Algorithm of the voucher signing key generated on first start."""
    signing_kid: str | None = None
    """Which key of ``DATA_DIR/keys`` signs; default the newest one with a private key."""

    max_body_bytes: int = Field(default=16 * 1024, gt=0)
    retry_after_seconds: int = Field(default=1, gt=0)
    log_level: str = "INFO"
    access_log: bool = False
    """One JSON line per request from uvicorn (off by default: costly at claim rates)."""

    @property
    def profile(self) -> str:
        gate = "redis" if self.redis_url else "sqlite"
        store = "mongo" if self.mongodb_uri else "sqlite"
        return "embedded" if gate == store == "sqlite" else f"scaled (gate {gate}, store {store})"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def identity_dir(self) -> Path:
        return self.data_dir / "identity"

    @property
    def uses_dev_identity(self) -> bool:
        return self.user_jwks is None and self.user_secret is None

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Self:
        if self.user_jwks is not None and self.user_secret is not None:
            raise ValueError("set SHOPCARDD_USER_JWKS or SHOPCARDD_USER_SECRET, not both")
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
        return self
