"""Shared fixtures: mock providers and the real relay started as a subprocess.

Fixture API (other test modules code against these names):

``mocks`` (session)
    ``MockProviders`` with ``.openai``, ``.anthropic``, ``.gemini``, ``.generic`` (each a
    started ``providers.mock.MockProvider``).  Recorded requests/streams/counters are
    cleared before every test.
``relay_env`` (function)
    ``relay_env(data_dir=None, **overrides) -> dict[str, str]``: the clean environment a
    test relay gets (fake ENCRYPTION_SECRET, SQLite in ``data_dir``, huge rate limits,
    every built-in provider's ``PROVIDER_<NAME>_BASE_URL`` pointing at its mock).
``start_relay`` (function)
    ``start_relay(data_dir=None, extra_args=None, health_timeout=15.0, **env_overrides)
    -> Relay``: starts ``python -m byok_relay serve --host 127.0.0.1 --port <free>`` and
    waits for ``GET /health`` 200.  Env overrides are upper-case variable names; ``None``
    removes a variable.  Pass the same ``data_dir`` to restart on the same database.
    Every relay started is stopped at teardown.
``relay`` (session)
    One default relay shared by most tests.
``register`` (function)
    ``register(relay=None, app_id="test-app") -> User`` (default relay when ``None``).
``http`` (session)
    A shared ``httpx.Client`` (``trust_env=False``) for tests that talk to mocks or relays.
``user`` (function)
    A fresh user on the default relay with fake keys stored for openai, anthropic, google.

``Relay``: ``.url .port .env .db_path .log_path .log_text() .log_tail() .proc .alive
.client() .stop(sig=SIGTERM, timeout=15.0) -> exit code .kill()``.
``User``: ``.token .headers .app_id .expires_at .relay .client()
.store_key(provider, key=FAKE_KEY, base_url=None)``.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from backends import (  # noqa: F401  (fixtures and hooks: see tests/backends.py)
    pg_db,
    pg_relay_env,
    pg_url,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_sessionfinish,
    redis_ns,
)
from providers.mock import MockProviders
from providers.relay import (
    FAKE_KEY,
    Register,
    Relay,
    RelayEnv,
    StartRelay,
    User,
    http_client,
    register_user,
    start_relay_process,
)
from providers.relay import relay_env as build_relay_env

# PostgreSQL / Redis fixtures (pg_db, pg_url, redis_ns) and, with
# BYOK_TEST_BACKEND=postgres, every harness relay on PostgreSQL: see tests/backends.py.
build_relay_env = pg_relay_env(build_relay_env)

_active_mocks: MockProviders | None = None


@pytest.fixture(scope="session")
def mocks() -> Iterator[MockProviders]:
    global _active_mocks
    providers = MockProviders.create().start()
    _active_mocks = providers
    try:
        yield providers
    finally:
        _active_mocks = None
        providers.stop()


@pytest.fixture(scope="session")
def http() -> httpx.Client:
    """A shared sync httpx client (no base URL, no outer proxy settings)."""
    return http_client()


@pytest.fixture(autouse=True)
def _clear_mocks() -> None:
    """Each test starts with empty request logs (only if the mocks are running)."""
    if _active_mocks is not None:
        _active_mocks.clear()


@pytest.fixture
def relay_env(mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory) -> RelayEnv:
    def make(data_dir: Path | None = None, **overrides: str | None) -> dict[str, str]:
        directory = data_dir or tmp_path_factory.mktemp("relay")
        return build_relay_env(mocks, directory, **overrides)

    return make


def _stop_quietly(relay: Relay) -> None:
    with contextlib.suppress(Exception):
        if relay.alive:
            try:
                relay.stop(signal.SIGTERM, timeout=10)
            except TimeoutError:
                pass
    with contextlib.suppress(Exception):
        relay.kill()


@contextlib.contextmanager
def identity_relay(
    mocks: MockProviders, directory: Path, issuers_file: Path, **overrides: str
) -> Iterator[Relay]:
    """A relay that trusts the identity providers in `issuers_file` (SPEC §10; the test
    IdPs of providers/idp.py serve their JWKS over http on loopback, hence
    ALLOW_PRIVATE_UPSTREAMS), stopped at the end."""
    env = build_relay_env(mocks, directory, JWT_ISSUERS_FILE=str(issuers_file),
                          ALLOW_PRIVATE_UPSTREAMS="true", **overrides)  # fmt: skip
    server = start_relay_process(env, directory)
    try:
        yield server
    finally:
        _stop_quietly(server)


@pytest.fixture
def start_relay(
    mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartRelay]:
    started: list[Relay] = []

    def start(
        data_dir: Path | None = None,
        extra_args: list[str] | None = None,
        health_timeout: float = 15.0,
        **env_overrides: str | None,
    ) -> Relay:
        directory = data_dir or tmp_path_factory.mktemp("relay")
        env = build_relay_env(mocks, directory, **env_overrides)
        relay = start_relay_process(
            env, directory, extra_args=extra_args, health_timeout=health_timeout
        )
        started.append(relay)
        return relay

    yield start
    for relay in started:
        _stop_quietly(relay)


@pytest.fixture(scope="session")
def relay(mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    directory = tmp_path_factory.mktemp("relay-default")
    server = start_relay_process(build_relay_env(mocks, directory), directory)
    try:
        yield server
    finally:
        _stop_quietly(server)


@pytest.fixture
def register(request: pytest.FixtureRequest) -> Register:
    def do_register(relay: Relay | None = None, app_id: str = "test-app") -> User:
        target: Relay = relay if relay is not None else request.getfixturevalue("relay")
        return register_user(target, app_id)

    return do_register


@pytest.fixture
def user(relay: Relay, register: Register) -> User:
    new_user = register(relay)
    for provider in ("openai", "anthropic", "google"):
        new_user.store_key(provider, FAKE_KEY)
    return new_user


@pytest.fixture(scope="module")
def shared_user(relay: Relay) -> User:
    """One user (openai, anthropic, google keys) for a module's tests that only read."""
    new_user = register_user(relay)
    for provider in ("openai", "anthropic", "google"):
        new_user.store_key(provider, FAKE_KEY)
    return new_user
