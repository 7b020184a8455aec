"""One typed settings object: every environment variable, its default and its check.

Values come from the process environment and a `.env` file in the working directory
(environment wins). An invalid value stops the start with one line naming the variable
(`ConfigError`), which `byok-relay serve` and `byok-relay doctor` print as is.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from limits import RateLimitItem, parse
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_FILE = ".env"
DEFAULT_DATABASE_URL = "sqlite:///./data/relay.db"
_PROVIDER_URL_VAR = re.compile(r"^PROVIDER_([A-Z0-9_]+)_BASE_URL$")
_ORIGIN = re.compile(r"^https?://[^\s/?#@]+$")


class ConfigError(Exception):
    """A configuration value is invalid; the message names the variable."""


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=True,
        validate_default=True,
    )

    # --- secrets ---------------------------------------------------------------
    ENCRYPTION_SECRET: SecretStr = Field(
        description="Master secret for key encryption (>= 32 characters). Required."
    )
    ENCRYPTION_SECRET_PREVIOUS: str = Field(
        "", description="Comma list of earlier ENCRYPTION_SECRET values, still used to decrypt."
    )
    TOKEN_HMAC_SECRET: SecretStr | None = Field(
        None, description="Secret for relay-token HMACs; derived from ENCRYPTION_SECRET if unset."
    )
    APP_SECRET: SecretStr | None = Field(
        None, description="If set, POST /users needs Authorization: Bearer <APP_SECRET>."
    )
    METRICS_TOKEN: SecretStr | None = Field(
        None, description="If set, GET /metrics needs Authorization: Bearer <METRICS_TOKEN>."
    )

    # --- server ----------------------------------------------------------------
    HOST: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Interface to listen on (0.0.0.0 in containers).",
    )
    PORT: int = Field(3000, ge=1, le=65535, description="TCP port to listen on.")
    WORKERS: int = Field(1, ge=1, le=256, description="Worker processes sharing the port.")
    LOG_LEVEL: str = Field("info", description="debug, info, warning or error.")
    SHUTDOWN_GRACE_S: float = Field(
        30.0, ge=0, description="On SIGTERM, how long open streams may finish."
    )

    # --- storage ---------------------------------------------------------------
    DATABASE_URL: str | None = Field(
        None, description="sqlite:///relative, sqlite:////absolute or postgresql://…"
    )
    DB_PATH: str | None = Field(
        None, description="SQLite file path (the reference's variable), if DATABASE_URL unset."
    )
    DB_POOL_SIZE: int = Field(10, ge=1, le=1000, description="PostgreSQL connection pool size.")
    REQUEST_LOG_RETENTION_DAYS: int = Field(
        90, ge=0, le=36500, description="Days request-log rows are kept (0 = forever)."
    )
    CACHE_TTL_S: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="How long a token or key is served from memory before it is re-read.",
    )
    REDIS_URL: str | None = Field(
        None, description="redis://… shares rate limits (and invalidations) across instances."
    )
    REDIS_KEY_PREFIX: str = Field(
        "byok-relay",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Prefix of this relay's Redis keys and pub/sub channel (several relays, "
        "one Redis).",
    )

    # --- tokens ----------------------------------------------------------------
    # Capped at 100 years: ms timestamps must fit a 64-bit column (SQLite/PostgreSQL).
    TOKEN_EXPIRY_DAYS: int = Field(
        90, ge=0, le=36500, description="Relay-token lifetime in days (at most 36500); 0 = never."
    )

    # --- relaying --------------------------------------------------------------
    ALLOWED_ORIGINS: str = Field("*", description="CORS origins, comma list; * for any.")
    ALLOWED_MODELS: str = Field(
        "", description="Model allowlist, comma list of globs; empty = any."
    )
    ALLOW_PRIVATE_UPSTREAMS: bool = Field(
        False, description="Allow http and private addresses in client-supplied base URLs."
    )
    PROVIDERS_FILE: Path | None = Field(None, description="TOML file of custom providers.")
    UPSTREAM_TIMEOUT_S: float = Field(
        120.0, gt=0, description="Max wait for provider headers (and between body reads)."
    )
    UPSTREAM_CONNECT_TIMEOUT_S: float = Field(
        10.0, gt=0, description="Max time to open a connection to a provider."
    )
    REQUEST_BODY_LIMIT_BYTES: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 beyond)."
    )

    # --- abuse controls --------------------------------------------------------
    RATE_LIMIT_GLOBAL: str = Field("100/minute", description="Per client IP, all routes.")
    RATE_LIMIT_RELAY: str = Field("20/minute", description="Per relay token, relay routes.")
    RATE_LIMIT_REGISTER: str = Field("10/hour", description="Per client IP, POST /users.")
    TRUSTED_PROXIES: str = Field(
        "", description="Hop count or comma list of CIDRs whose X-Forwarded-For is believed."
    )

    # --- build info (set by the Dockerfile or CI) ------------------------------
    BUILD_COMMIT: str = Field("unknown", description="Commit the build was made from.")
    BUILD_TIME: str = Field("unknown", description="When the build was made.")

    # Filled from PROVIDER_<NAME>_BASE_URL variables (names vary, so not declared fields).
    provider_base_urls: dict[str, str] = Field(default_factory=dict, exclude=True)

    @field_validator("ENCRYPTION_SECRET")
    @classmethod
    def _long_secret(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (run `byok-relay init`)")
        return v

    @field_validator("TOKEN_HMAC_SECRET")
    @classmethod
    def _long_hmac_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value():
            return None
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return v

    @field_validator("APP_SECRET", "METRICS_TOKEN")
    @classmethod
    def _no_spaces(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return None
        if any(c.isspace() for c in v.get_secret_value()):
            raise ValueError("must not contain whitespace")
        return v

    @field_validator("ENCRYPTION_SECRET_PREVIOUS")
    @classmethod
    def _previous_secrets(cls, v: str) -> str:
        for secret in _csv(v):
            if len(secret) < 32:
                raise ValueError("every previous secret must be at least 32 characters")
        return v

    @field_validator("LOG_LEVEL")
    @classmethod
    def _log_level(cls, v: str) -> str:
        if v.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return v.lower()

    @field_validator("RATE_LIMIT_GLOBAL", "RATE_LIMIT_RELAY", "RATE_LIMIT_REGISTER")
    @classmethod
    def _rate(cls, v: str) -> str:
        try:
            item = parse(v)
        except ValueError:
            raise ValueError(f"{v!r} is not a rate such as '100/minute' or '10 per hour'") from None
        if item.amount < 1:
            raise ValueError(f"{v!r} would refuse every request; the amount must be at least 1")
        return v

    @field_validator("ALLOWED_ORIGINS")
    @classmethod
    def _origins(cls, v: str) -> str:
        # An origin is scheme://host[:port] exactly as browsers send it; anything else
        # (a bare host, a path) would silently never match and break CORS.
        for origin in _csv(v):
            if origin not in ("*", "null") and not _ORIGIN.match(origin.rstrip("/")):
                raise ValueError(
                    f"{origin!r} is not an origin such as https://app.example or "
                    "http://localhost:5173 (scheme, host and optional port; no path)"
                )
        return v

    @field_validator("TRUSTED_PROXIES")
    @classmethod
    def _trusted(cls, v: str) -> str:
        v = v.strip()
        if not v or v.isdigit():
            return v
        for cidr in _csv(v):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is neither a hop count nor a CIDR") from None
        return v

    @field_validator("DATABASE_URL")
    @classmethod
    def _db_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not v.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(
                "must start with sqlite:/// (e.g. sqlite:///./data/relay.db) or postgresql://"
            )
        return v

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("PROVIDERS_FILE")
    @classmethod
    def _providers_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"{v} does not exist or is not a file")
        return v

    # --- derived values (computed once, read on the hot path) ------------------
    @property
    def database_url(self) -> str:
        if self.DATABASE_URL:
            return self.DATABASE_URL
        if self.DB_PATH:
            return "sqlite:///" + self.DB_PATH
        return DEFAULT_DATABASE_URL

    @property
    def allowed_origins(self) -> list[str]:
        return _csv(self.ALLOWED_ORIGINS) or ["*"]

    @property
    def allowed_models(self) -> list[str]:
        return _csv(self.ALLOWED_MODELS)

    @property
    def previous_secrets(self) -> list[str]:
        return _csv(self.ENCRYPTION_SECRET_PREVIOUS)

    def rate(self, name: str) -> RateLimitItem:
        return parse(getattr(self, name))


def _provider_overrides(env: dict[str, str]) -> dict[str, str]:
    """PROVIDER_<NAME>_BASE_URL → {name: url}; NAME upper-cased with '-' as '_'."""
    found: dict[str, str] = {}
    for var, value in env.items():
        m = _PROVIDER_URL_VAR.match(var)
        if m and value.strip():
            if not value.startswith(("http://", "https://")):
                raise ConfigError(f"{var}: must be an http:// or https:// URL")
            found[m.group(1)] = value.strip().rstrip("/")
    return found


def load_settings(env_file: str | None = ENV_FILE, **overrides: Any) -> Settings:
    """Read and check the configuration; raise ConfigError naming the first bad variable."""
    try:
        settings = Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        err = exc.errors()[0]
        var = ".".join(str(p) for p in err["loc"]) or "configuration"
        if err["type"] == "missing":
            msg = "is required but not set (run `byok-relay init` to write a .env)"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{var}: {msg}") from None
    merged: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ)
    settings.provider_base_urls = _provider_overrides(merged)
    return settings
