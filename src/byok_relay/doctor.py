"""`byok-relay doctor`: check the configuration, say what is wrong and how to fix it."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

from byok_relay.config import ENV_FILE, ConfigError, Settings, load_settings
from byok_relay.providers import ProviderConfigError, ProviderRegistry


class Report:
    def __init__(self) -> None:
        self.errors = 0

    def ok(self, msg: str) -> None:
        print(f"  ok     {msg}")

    def warn(self, msg: str) -> None:
        print(f"  warn   {msg}")

    def error(self, msg: str) -> None:
        self.errors += 1
        print(f"  ERROR  {msg}")


def _sqlite_file(settings: Settings, report: Report) -> bool:
    """Checks on the SQLite file made without opening it (opening creates the file and
    makes it 0600). False when there is no file yet: doctor must not create one."""
    from byok_relay.storage.sqlite import sqlite_path

    raw = sqlite_path(settings.database_url)
    if raw == ":memory:":
        return True
    path = Path(raw)
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            report.warn(f"{path} has mode {mode:o}: other users may read it (chmod 600 {path})")
        return True
    ancestor = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    try:
        # What `serve` will do (mkdir there), tried with a scratch directory, then undone.
        os.rmdir(tempfile.mkdtemp(prefix=".byok-relay-doctor-", dir=ancestor))
    except OSError as exc:
        report.error(
            f"DATABASE_URL: the database {path} cannot be created in {ancestor} "
            f"({exc.strerror}); check DATABASE_URL / DB_PATH"
        )
        return False
    report.ok(f"database {path} does not exist yet; serve or migrate will create it")
    return False


async def _check_storage(settings: Settings, report: Report) -> None:
    from byok_relay.storage import StorageUnavailable, open_storage
    from byok_relay.storage.migrations import MIGRATIONS

    if settings.database_url.startswith("sqlite:///") and not _sqlite_file(settings, report):
        return
    try:
        storage = open_storage(settings.database_url, pool_size=1)
        await storage.connect()
    except (StorageUnavailable, RuntimeError, OSError) as exc:
        report.error(f"database: cannot connect ({exc}); check DATABASE_URL")
        return
    try:
        await storage.ping()
        version = await storage.schema_version()
        latest = MIGRATIONS[-1].version
        if version < latest:
            report.warn(
                f"database schema at version {version}, code expects {latest}: "
                "run `byok-relay migrate` (serve also migrates at start)"
            )
        else:
            report.ok(f"database reachable, schema version {version}")
    except Exception as exc:
        report.error(f"database: {type(exc).__name__}: {exc}")
    finally:
        await storage.close()


async def _check_redis(settings: Settings, report: Report) -> None:
    if not settings.REDIS_URL:
        report.ok(
            "rate limits and budgets counted in memory (set REDIS_URL to share them "
            "across workers and instances)"
        )
        return
    try:
        import redis.asyncio as aioredis

        client = aioredis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
        await client.ping()
        await client.aclose()
        report.ok("Redis reachable")
    except Exception as exc:
        report.error(f"REDIS_URL: Redis not reachable ({type(exc).__name__}); is it running?")


async def _check_identity(settings: Settings, report: Report) -> None:
    """Fetch every issuer's keys as the relay would (the guarded session, JWKS_TIMEOUT_S)."""
    import asyncio

    from byok_relay.identity.keys import JwksError, key_source
    from byok_relay.upstream import Upstream

    upstream = Upstream(settings)
    await upstream.start()
    try:
        sources = [
            (issuer, key_source(issuer, lambda: upstream.guarded, settings.JWKS_TIMEOUT_S))
            for issuer in settings.jwt_issuers
        ]
        found = await asyncio.gather(*(s.load() for _, s in sources), return_exceptions=True)
    finally:
        await upstream.close()
    for (issuer, _), kids in zip(sources, found, strict=True):
        name = issuer.issuer
        if isinstance(kids, JwksError):
            where = "the JWKS" if issuer.jwks_url else f"jwks_file {issuer.jwks_file}"
            report.error(f"{name}: cannot fetch {where}: {kids}")
        elif isinstance(kids, BaseException):
            raise kids
        elif issuer.shared_secret is not None:
            report.ok(f"{name}: shared secret ({', '.join(sorted(issuer.algorithms))})")
        else:
            plural = "key" if len(kids) == 1 else "keys"
            report.ok(f"{name}: {len(kids)} {plural} ({', '.join(kids)})")


async def _check_custody(settings: Settings, report: Report) -> None:
    """SPEC §11: the module loads, the token and key exist, a wrap/unwrap round trip works."""
    from byok_relay.custody import HsmConfigError, HsmUnavailable, hsm_from_settings

    try:
        hsm = hsm_from_settings(settings)
    except ConfigError as exc:
        report.error(str(exc))
        return
    if hsm is None:
        report.ok("key custody: local (provider keys sealed under ENCRYPTION_SECRET)")
        return
    c = hsm.config
    try:
        await hsm.connect()
        report.ok(f"PKCS#11: module {c.module} loads, token {c.token_label!r} accepts the PIN, "
                  f"key {c.key_label!r} found")  # fmt: skip
        await hsm.round_trip()
        report.ok(f"PKCS#11: wrap/unwrap round trip works (key custody: {settings.KEY_CUSTODY})")
    except (HsmConfigError, HsmUnavailable) as exc:
        report.error(f"{exc} (docs/key-custody.md)")
    finally:
        await hsm.close()


async def run_doctor() -> int:
    report = Report()
    print("byok-relay doctor")
    env_file = Path(ENV_FILE)
    if not env_file.exists():
        report.warn(f"no {ENV_FILE} in {os.getcwd()}: run `byok-relay init` to create one")
    else:
        mode = stat.S_IMODE(env_file.stat().st_mode)
        if mode & 0o077:
            report.warn(
                f"{ENV_FILE} has mode {mode:o}: other users may read its secrets "
                f"(chmod 600 {ENV_FILE})"
            )
    try:
        settings = load_settings(ENV_FILE)
    except ConfigError as exc:
        report.error(f"{exc}")
        print("1 problem found.", file=sys.stderr)
        return 1
    report.ok("configuration values are valid")
    try:
        registry = ProviderRegistry.load(settings.PROVIDERS_FILE, settings.provider_base_urls)
        report.ok(f"{len(registry.names)} providers: {', '.join(registry.names)}")
    except ProviderConfigError as exc:
        report.error(str(exc))
    for name, url in settings.provider_base_urls.items():
        report.ok(f"PROVIDER_{name}_BASE_URL overrides the upstream with {url}")
    if "*" in settings.allowed_origins:
        report.warn("ALLOWED_ORIGINS is * : set it to your app's origin(s) in production")
    if settings.APP_SECRET is None:
        report.warn("APP_SECRET is not set: anyone can register users (POST /users)")
    if settings.ALLOW_PRIVATE_UPSTREAMS:
        report.warn("ALLOW_PRIVATE_UPSTREAMS is on: clients may target private addresses")
    if settings.JWT_ONLY:
        report.ok("JWT_ONLY: users come only from the identity providers below")
    await _check_identity(settings, report)
    await _check_custody(settings, report)
    await _check_storage(settings, report)
    await _check_redis(settings, report)
    if report.errors:
        print(f"{report.errors} problem(s) found.", file=sys.stderr)
        return 1
    print("all good.")
    return 0
