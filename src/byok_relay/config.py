"""One typed settings object: every environment variable, its default and its check.

Values come from the process environment and a `.env` file in the working directory
(environment wins). An invalid value stops the start with one line naming the variable
(`ConfigError`), which `byok-relay serve` and `byok-relay doctor` print as is.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from limits import RateLimitItem, parse
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from byok_relay.netguard import is_loopback_host

ENV_FILE = ".env"
DEFAULT_DATABASE_URL = "sqlite:///./data/relay.db"
# What RATE_LIMIT_REGISTER is when unset on a relay reachable from loopback only.
LOOPBACK_REGISTER_LIMIT = "100/hour"
_PROVIDER_URL_VAR = re.compile(r"^PROVIDER_([A-Z0-9_]+)_BASE_URL$")
_PROVIDER_URL_ANY_CASE = re.compile(r"^provider_(.+)_base_url$", re.IGNORECASE)
#: zxcvbn's estimate of the guesses a secret takes, as a power of ten: below this it is
#: "obviously weak" (a word, a repeat, a keyboard walk); `init` writes ~10^64.
MIN_SECRET_GUESSES_LOG10 = 25.0
_LOGGER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_ORIGIN = re.compile(r"^https?://[^\s/?#@]+$")
#: A host[:port] safe to write into Markdown and URLs (GET /skill, /llms.txt): DNS labels
#: (underscores allowed, as in container names), IPv4, or a bracketed IPv6 address.
HOST_PORT = re.compile(
    r"(?:[A-Za-z0-9_][A-Za-z0-9_-]{0,62}(?:\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?"
    r"|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
_PUBLIC_URL = re.compile(r"https?://(?P<host>[^/?#\s]{1,260})(?P<path>/[A-Za-z0-9._~%/-]*)?")


class ConfigError(Exception):
    """A configuration value is invalid; the message names the variable."""


def secret_weakness(secret: str) -> str | None:
    """Why a secret is obviously weak (zxcvbn's reading), or None when it is not."""
    from zxcvbn import zxcvbn  # loaded only to check secrets, at start

    sample = secret[:128]  # zxcvbn's cost grows fast with length; 128 is plenty
    result = zxcvbn(sample, max_length=len(sample))
    if result["guesses_log10"] >= MIN_SECRET_GUESSES_LOG10:
        return None
    warning = result["feedback"].get("warning") or "it follows a guessable pattern"
    return (
        f"is too easy to guess ({warning.rstrip('.')}); use 32 random bytes, e.g. "
        "`byok-relay init` or python3 -c 'import secrets; print(secrets.token_hex(32))'"
    )


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
    LOG_LEVEL: str = Field(
        "info", description="debug, info, warning or error (the relay's own log lines)."
    )
    LOG_FORMAT: Literal["auto", "json", "text"] = Field(
        "auto",
        description="json (one object per line, for services), text (for people) or auto: "
        "text when the log goes to a terminal, json otherwise.",
    )
    LOG_LEVELS: str = Field(
        "",
        description="Other libraries' loggers by name, e.g. aiohttp.client=debug "
        "(comma list); every other library logs warnings only.",
    )
    SHUTDOWN_GRACE_S: float = Field(
        30.0, ge=0, description="On SIGTERM, how long open streams may finish."
    )
    CLIENT_HEADER_TIMEOUT_S: float = Field(
        60.0,
        gt=0,
        description="A new connection must send a complete request head within "
        "this (nginx's client_header_timeout).",
    )
    CLIENT_BODY_TIMEOUT_S: float = Field(
        75.0,
        gt=0,
        description="A request body that sends nothing for this long is refused "
        "(408) and its connection closed.",
    )
    KEEPALIVE_TIMEOUT_S: float = Field(
        75.0,
        gt=0,
        description="An idle keep-alive connection is closed after this "
        "(nginx's keepalive_timeout).",
    )
    PUBLIC_URL: str | None = Field(
        None,
        description="The relay's public base URL (https://relay.example.com), written into "
        "GET /skill and /llms.txt; unset = the URL each request came in on.",
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
        90,
        ge=0,
        le=36500,
        description="Days raw request-log rows are kept (0 = forever); a row is never "
        "purged before it is folded into the hourly rollups.",
    )
    REQUEST_LOG_ROLLUP_RETENTION_DAYS: int = Field(
        0,
        ge=0,
        le=36500,
        description="Days the hourly request-log rollups are kept (0 = forever); they "
        "serve GET /stats and budgets, so keep at least 31 with month budgets.",
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
    SCOPED_TOKEN_MAX_TTL_S: int = Field(
        2_592_000,
        ge=1,
        le=31_536_000,
        description="Longest ttl_s a scoped token (POST /tokens) may ask for; default 30 days.",
    )

    # --- identity (SPEC §10, docs/identity.md) --------------------------------
    JWT_ISSUERS_FILE: Path | None = Field(
        None,
        description="TOML file of trusted identity providers: their signed-in users' JWTs "
        "are accepted as the credential.",
    )
    JWT_ONLY: bool = Field(
        False,
        description="Close POST /users (403): every user comes from JWT_ISSUERS_FILE's "
        "identity providers.",
    )
    JWKS_TIMEOUT_S: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Longest wait for an identity provider's JWKS; after it, 503 (or the "
        "keys already cached).",
    )

    # --- relaying --------------------------------------------------------------
    ALLOWED_ORIGINS: str = Field("*", description="CORS origins, comma list; * for any.")
    ALLOWED_MODELS: str = Field(
        "", description="Model allowlist, comma list of globs; empty = any."
    )
    ALLOW_PRIVATE_UPSTREAMS: bool = Field(
        False, description="Allow http and private addresses in client-supplied base URLs."
    )
    DNS_SERVERS: str = Field(
        "",
        description="Name servers (comma list of ip or ip:port) for client-supplied base "
        "URLs; empty = the system's (/etc/resolv.conf).",
    )
    DNS_TIMEOUT_S: float = Field(
        5.0, gt=0, le=60, description="Max time to resolve a client-supplied upstream host."
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
    RATE_LIMIT_REGISTER: str = Field(
        "10/hour",
        description="Per client IP, POST /users. Left unset on a relay that listens on "
        f"loopback only, it is {LOOPBACK_REGISTER_LIMIT} so trying it out cannot lock you out.",
    )
    TRUSTED_PROXIES: str = Field(
        "", description="Hop count or comma list of CIDRs whose X-Forwarded-For is believed."
    )
    RATE_LIMIT_IPV6_PREFIX: int = Field(
        64,
        ge=32,
        le=128,
        description="IPv6 clients are counted per network of this prefix length (one "
        "subscriber usually holds a whole /64).",
    )

    # --- key custody (SPEC §11, docs/key-custody.md) --------------------------
    KEY_CUSTODY: Literal["local", "pkcs11"] = Field(
        "local",
        description="Who holds the master key of stored provider keys: local (derived from "
        "ENCRYPTION_SECRET) or pkcs11 (an HSM's non-extractable key).",
    )
    PKCS11_MODULE: Path | None = Field(
        None, description="The HSM's PKCS#11 library (.so), for KEY_CUSTODY=pkcs11."
    )
    PKCS11_TOKEN_LABEL: str | None = Field(None, description="Label of the PKCS#11 token.")
    PKCS11_PIN: SecretStr | None = Field(None, description="User PIN of the token.")
    PKCS11_PIN_FILE: Path | None = Field(
        None, description="File holding the user PIN (instead of PKCS11_PIN)."
    )
    PKCS11_KEY_LABEL: str = Field(
        "byok-relay-master",
        min_length=1,
        max_length=128,
        description="Label of the non-extractable AES-256 master key on the token.",
    )

    # --- build info (set by the Dockerfile or CI) ------------------------------
    BUILD_COMMIT: str = Field("unknown", description="Commit the build was made from.")
    BUILD_TIME: str = Field("unknown", description="When the build was made.")

    # Filled from PROVIDER_<NAME>_BASE_URL variables (names vary, so not declared fields).
    provider_base_urls: dict[str, str] = Field(default_factory=dict, exclude=True)
    #: JWT_ISSUERS_FILE, read and checked by load_settings (identity/issuers.py).
    jwt_issuers: tuple[Any, ...] = Field(default_factory=tuple, exclude=True)

    @field_validator("ENCRYPTION_SECRET")
    @classmethod
    def _long_secret(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (run `byok-relay init`)")
        weakness = secret_weakness(v.get_secret_value())
        if weakness:
            raise ValueError(weakness)
        return v

    @field_validator("TOKEN_HMAC_SECRET")
    @classmethod
    def _long_hmac_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value():
            return None
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        weakness = secret_weakness(v.get_secret_value()) if v is not None else None
        if weakness:
            raise ValueError(weakness)
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
        if v.lower() not in _LOG_LEVELS:
            raise ValueError("must be one of debug, info, warning, error")
        return v.lower()

    @field_validator("LOG_LEVELS")
    @classmethod
    def _log_levels(cls, v: str) -> str:
        for item in _csv(v):
            name, sep, level = item.partition("=")
            if not sep or not _LOGGER_NAME.match(name.strip()):
                raise ValueError(f"{item!r} is not logger=level (e.g. aiohttp.client=debug)")
            if level.strip().lower() not in _LOG_LEVELS:
                raise ValueError(f"{item!r}: the level must be one of debug, info, warning, error")
        return v

    @field_validator("DNS_SERVERS")
    @classmethod
    def _dns_servers(cls, v: str) -> str:
        for server in _csv(v):
            host, port = _split_host_port(server)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(
                    f"{server!r} is not an IP address with an optional port "
                    "(1.1.1.1, 127.0.0.1:5353, [::1]:53)"
                ) from None
            if port is not None and not 0 < port < 65536:
                raise ValueError(f"{server!r} has an invalid port")
        return v

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

    @field_validator("PUBLIC_URL")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        url = v.strip().rstrip("/")
        m = _PUBLIC_URL.fullmatch(url)
        if m is None or not HOST_PORT.fullmatch(m["host"]):
            raise ValueError(
                f"{v!r} is not a base URL such as https://relay.example.com or "
                "https://example.com/relay (http or https, a host, an optional port and path; "
                "no query, fragment, user name or spaces)"
            )
        return url

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

    @field_validator("PROVIDERS_FILE", "JWT_ISSUERS_FILE", "PKCS11_MODULE", "PKCS11_PIN_FILE")
    @classmethod
    def _existing_file(cls, v: Path | None) -> Path | None:
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

    @property
    def dns_servers(self) -> list[str]:
        return _csv(self.DNS_SERVERS)

    @property
    def logger_levels(self) -> dict[str, str]:
        levels = {}
        for item in _csv(self.LOG_LEVELS):
            name, _, level = item.partition("=")
            levels[name.strip()] = level.strip().lower()
        return levels

    def rate(self, name: str) -> RateLimitItem:
        return parse(getattr(self, name))

    @property
    def log_as_text(self) -> bool:
        if self.LOG_FORMAT == "auto":
            return sys.stdout.isatty()  # the log goes to stdout
        return self.LOG_FORMAT == "text"

    @property
    def listens_on_loopback_only(self) -> bool:
        return is_loopback_host(self.HOST)

    @property
    def register_limit(self) -> str:
        """RATE_LIMIT_REGISTER as it applies: a developer trying the relay on their own
        machine registers often (walk-through, demo, client.js), and only their own
        processes can reach a loopback-only relay, so the unset default is relaxed there."""
        if "RATE_LIMIT_REGISTER" in self.model_fields_set or not self.listens_on_loopback_only:
            return self.RATE_LIMIT_REGISTER
        return LOOPBACK_REGISTER_LIMIT


def _split_host_port(server: str) -> tuple[str, int | None]:
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port = rest.removeprefix(":")
    elif server.count(":") == 1:
        host, _, port = server.partition(":")
    else:
        host, port = server, ""
    if port and not port.isdigit():
        return server, None
    return host, int(port) if port else None


def _provider_overrides(env: dict[str, str]) -> dict[str, str]:
    """PROVIDER_<NAME>_BASE_URL → {name: url}; NAME upper-cased with '-' as '_'.

    Variable names are case-sensitive: a lower-case spelling would be ignored silently
    and the key sent to the real provider, so it stops the start instead."""
    found: dict[str, str] = {}
    for var, value in env.items():
        m = _PROVIDER_URL_VAR.match(var)
        if m is None:
            if _PROVIDER_URL_ANY_CASE.match(var):
                raise ConfigError(
                    f"{var}: variable names are case-sensitive; "
                    f"write {var.upper().replace('-', '_')}"
                )
            continue
        url = value.strip().rstrip("/")
        if not url:
            continue
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{var}: must be an http:// or https:// URL")
        if "?" in url or "#" in url:
            raise ConfigError(f"{var}: must not have a query string or fragment")
        if any(c.isspace() for c in url):
            raise ConfigError(f"{var}: must not contain whitespace")
        found[m.group(1)] = url
    return found


def load_settings(env_file: str | None = ENV_FILE, **overrides: Any) -> Settings:
    """Read and check the configuration; raise ConfigError naming the first bad variable."""
    try:
        settings = Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        err = exc.errors()[0]
        var = ".".join(str(p) for p in err["loc"]) or "configuration"
        if err["type"] == "missing":
            msg = "is required but " + _where_env_was_looked_for(env_file)
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{var}: {msg}") from None
    merged: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ)
    settings.provider_base_urls = _provider_overrides(merged)
    if settings.JWT_ISSUERS_FILE is not None:
        from byok_relay.identity.issuers import IdentityConfigError, load_issuers

        try:
            settings.jwt_issuers = load_issuers(
                settings.JWT_ISSUERS_FILE, merged, allow_private=settings.ALLOW_PRIVATE_UPSTREAMS
            )
        except IdentityConfigError as exc:
            raise ConfigError(str(exc)) from None
    _check_custody(settings)
    _check_extras(settings)
    if settings.JWT_ONLY and settings.JWT_ISSUERS_FILE is None:
        raise ConfigError(
            "JWT_ONLY: needs JWT_ISSUERS_FILE (with JWT_ONLY=true and no identity provider, "
            "nobody could ever sign in)"
        )
    return settings


# (setting, module it needs, the extra that installs it, what for)
_EXTRAS = (
    ("DATABASE_URL", "asyncpg", "postgres", "PostgreSQL"),
    ("REDIS_URL", "redis", "redis", "Redis"),
    ("PKCS11_MODULE", "pkcs11", "pkcs11", "an HSM over PKCS#11"),
)


def _check_extras(settings: Settings) -> None:
    """A setting that needs an optional package which is not installed: one line naming
    the extra, before anything starts (SPEC §7), instead of an ImportError traceback."""
    needed = {
        "DATABASE_URL": settings.database_url.startswith(("postgresql://", "postgres://")),
        "REDIS_URL": bool(settings.REDIS_URL),
        "PKCS11_MODULE": settings.PKCS11_MODULE is not None,
    }
    for name, module, extra, what in _EXTRAS:
        if not needed[name]:
            continue
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(
                f"{name}: {what} needs the {extra} extra, which is not installed: "
                f"pip install 'byok-relay[{extra}]'"
            ) from None


def _where_env_was_looked_for(env_file: str | None) -> str:
    """Run from another directory, a relay misses its .env: say which file it read."""
    if not env_file:
        return "not set in the environment"
    path = Path(env_file).resolve()
    if path.is_file():
        return f"set neither in the environment nor in {path}"
    return f"not set in the environment, and there is no {path} (run `byok-relay init` there)"


def _check_custody(settings: Settings) -> None:
    if settings.KEY_CUSTODY != "pkcs11":
        return
    for name in ("PKCS11_MODULE", "PKCS11_TOKEN_LABEL"):
        if not getattr(settings, name):
            raise ConfigError(f"{name}: is required with KEY_CUSTODY=pkcs11")
    if (settings.PKCS11_PIN is None) == (settings.PKCS11_PIN_FILE is None):
        raise ConfigError("PKCS11_PIN: set exactly one of PKCS11_PIN and PKCS11_PIN_FILE "
                          "with KEY_CUSTODY=pkcs11")  # fmt: skip


def hsm_pin(settings: Settings) -> str:
    """The token's user PIN, from PKCS11_PIN or the first line of PKCS11_PIN_FILE."""
    if settings.PKCS11_PIN is not None:
        return settings.PKCS11_PIN.get_secret_value()
    if settings.PKCS11_PIN_FILE is None:
        raise ConfigError("PKCS11_PIN: set PKCS11_PIN or PKCS11_PIN_FILE with PKCS11_MODULE")
    try:
        return settings.PKCS11_PIN_FILE.read_text("utf-8").splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError) as exc:
        raise ConfigError(f"PKCS11_PIN_FILE: cannot read a PIN from it ({exc})") from None
