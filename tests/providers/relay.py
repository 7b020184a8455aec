"""Start the real relay (``python -m byok_relay serve``) as a subprocess for tests.

``relay_env()`` builds a clean environment whose providers all point at the mocks;
``start_relay_process()`` starts the server on a free loopback port and waits for
``GET /health``; ``Relay`` controls it.  ``tests/conftest.py`` wraps these in fixtures.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import httpx

from .mock import Flavor, MockProviders


def fake_secret(label: str) -> str:
    """An obviously fake secret ("test-only-…") that still passes the relay's strength
    check (a hex digest of the label, not a pattern). Never a real secret."""
    return f"test-only-{label}-" + hashlib.sha256(f"byok-relay {label}".encode()).hexdigest()[:48]


TEST_ENCRYPTION_SECRET: Final = fake_secret("encryption")
FAKE_KEY: Final = "sk-test-FAKEKEY-0000000000"

#: Every built-in provider and the mock flavor that serves it.
PROVIDER_MOCKS: Final[dict[str, Flavor]] = {
    "openai": "openai",
    "groq": "openai",
    "openrouter": "openai",
    "mistral": "openai",
    "deepseek": "openai",
    "xai": "openai",
    "together": "openai",
    "fireworks": "openai",
    "perplexity": "openai",
    "cohere": "openai",
    "cerebras": "openai",
    "anthropic": "anthropic",
    "google": "gemini",
    "elevenlabs": "generic",
    "deepgram": "generic",
    "huggingface": "generic",
}

#: Outer environment variables a child process may inherit; everything else is dropped
#: (ENCRYPTION_SECRET, DATABASE_URL, REDIS_URL, proxies ... never leak in from outside).
INHERITED_ENV: Final = (
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "TEMP",
    "TMP",
    "SYSTEMROOT",
    "VIRTUAL_ENV",
    "COVERAGE_PROCESS_START",
    "COVERAGE_FILE",
)

HEALTH_TIMEOUT_S: Final = 15.0

_shared_client: httpx.Client | None = None


def http_client() -> httpx.Client:
    """A shared sync httpx client for harness calls (created once: building an SSL context
    per request is slow).  ``trust_env=False``: no outer proxy settings for loopback."""
    global _shared_client
    if _shared_client is None or _shared_client.is_closed:
        _shared_client = httpx.Client(timeout=30.0, trust_env=False)
    return _shared_client


def provider_env_var(provider: str) -> str:
    """``PROVIDER_<NAME>_BASE_URL`` for a provider name (upper-cased, ``-`` -> ``_``)."""
    return f"PROVIDER_{provider.upper().replace('-', '_')}_BASE_URL"


def sqlite_url(db_path: Path) -> str:
    """SQLAlchemy-style URL; an absolute path gives ``sqlite:////abs/path``."""
    return f"sqlite:///{db_path}"


def relay_env(mocks: MockProviders, data_dir: Path, **overrides: str | None) -> dict[str, str]:
    """The environment of a test relay: clean, fake secret, SQLite in ``data_dir``,
    generous rate limits, every built-in provider pointed at its mock.

    ``overrides`` are applied last; a value of ``None`` removes the variable.
    """
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET,
            "DATABASE_URL": sqlite_url(data_dir.resolve() / "relay.db"),
            "LOG_LEVEL": "info",
            "RATE_LIMIT_GLOBAL": "100000/minute",
            "RATE_LIMIT_RELAY": "100000/minute",
            "RATE_LIMIT_REGISTER": "100000/hour",
        }
    )
    for provider, flavor in PROVIDER_MOCKS.items():
        env[provider_env_var(provider)] = mocks.by_flavor(flavor).url
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def db_path_from_env(env: Mapping[str, str], cwd: Path) -> Path | None:
    url = env.get("DATABASE_URL")
    if url is not None:
        if not url.startswith("sqlite:///"):
            return None
        path = Path(url[len("sqlite:///") :])
    elif "DB_PATH" in env:
        path = Path(env["DB_PATH"])
    else:
        path = Path("data/relay.db")
    return path if path.is_absolute() else cwd / path


@dataclass
class Relay:
    """A relay server running in a subprocess."""

    url: str
    port: int
    env: dict[str, str]
    db_path: Path | None
    log_path: Path
    proc: subprocess.Popen[bytes]
    cwd: Path
    args: list[str] = field(default_factory=list)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def client(self, **kwargs: Any) -> httpx.Client:
        """A sync httpx client bound to this relay (caller closes it)."""
        kwargs.setdefault("timeout", 30.0)
        kwargs.setdefault("trust_env", False)
        return httpx.Client(base_url=self.url, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait for the exit code.  On timeout, kill and raise."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise TimeoutError(
                    f"relay did not exit within {timeout} s after signal {sig}; killed.\n"
                    f"--- log tail ---\n{self.log_tail()}"
                ) from None
        return int(self.proc.returncode)

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(10)

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        client = http_client()
        while True:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"relay exited with code {code} before becoming healthy "
                    f"({' '.join(self.args)}).\n--- log tail ---\n{self.log_tail()}"
                )
            try:
                response = client.get(f"{self.url}/health", timeout=2.0)
                if response.status_code == 200:
                    return
                last_error = f"GET /health -> {response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(
                    f"relay not healthy within {timeout} s ({last_error}).\n"
                    f"--- log tail ---\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def __repr__(self) -> str:
        return f"Relay(url={self.url!r}, pid={self.proc.pid}, alive={self.alive})"


@contextlib.contextmanager
def relay_process(mocks: MockProviders, work_dir: Path, **overrides: str | None) -> Iterator[Relay]:
    """A relay for a whole test module (``relay_env`` + ``start_relay_process``), stopped
    at the end."""
    env = relay_env(mocks, work_dir, **overrides)
    relay = start_relay_process(env, work_dir, health_timeout=60)
    try:
        yield relay
    finally:
        relay.stop(timeout=10)


def start_relay_process(
    env: dict[str, str],
    work_dir: Path,
    *,
    extra_args: list[str] | None = None,
    health_timeout: float = HEALTH_TIMEOUT_S,
    port: int | None = None,
) -> Relay:
    """Start ``python -m byok_relay serve`` on 127.0.0.1 and wait until it is healthy.

    ``work_dir`` is the process's cwd (so no stray ``.env`` is read) and holds the log.
    Raises RuntimeError with the log tail if the relay does not come up.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    chosen_port = port or free_port()
    args = [
        sys.executable,
        "-m",
        "byok_relay",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(chosen_port),
        *(extra_args or []),
    ]
    log_path = work_dir / f"relay-{chosen_port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args,
            env=env,
            cwd=work_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    relay = Relay(
        url=f"http://127.0.0.1:{chosen_port}",
        port=chosen_port,
        env=dict(env),
        db_path=db_path_from_env(env, work_dir),
        log_path=log_path,
        proc=proc,
        cwd=work_dir,
        args=args,
    )
    try:
        relay.wait_healthy(health_timeout)
    except BaseException:
        relay.kill()
        raise
    return relay


@dataclass
class User:
    """A registered relay user."""

    relay: Relay
    token: str
    app_id: str
    expires_at: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"x-relay-token": self.token}

    def client(self, **kwargs: Any) -> httpx.Client:
        """A sync httpx client for the relay that sends this user's token."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.relay.client(headers=headers, **kwargs)

    def store_key(self, provider: str, key: str = FAKE_KEY, base_url: str | None = None) -> None:
        body: dict[str, Any] = {"key": key}
        if base_url is not None:
            body["base_url"] = base_url
        response = http_client().post(
            f"{self.relay.url}/keys/{provider}", json=body, headers=self.headers
        )
        assert response.status_code == 200, (
            f"POST /keys/{provider} -> {response.status_code}: {response.text}"
        )


def register_user(relay: Relay, app_id: str = "test-app") -> User:
    headers: dict[str, str] = {}
    app_secret = relay.env.get("APP_SECRET")
    if app_secret:
        headers["Authorization"] = f"Bearer {app_secret}"
    response = http_client().post(f"{relay.url}/users", json={"app_id": app_id}, headers=headers)
    assert response.status_code == 200, f"POST /users -> {response.status_code}: {response.text}"
    data = response.json()
    token = data.get("token")
    assert isinstance(token, str) and token, f"POST /users returned no token: {data}"
    return User(
        relay=relay, token=token, app_id=app_id, expires_at=data.get("expires_at"), raw=data
    )


def openai_user(relay: Relay) -> User:
    """A registered user with the fake OpenAI key stored: ready to relay a chat."""
    user = register_user(relay)
    user.store_key("openai", FAKE_KEY)
    return user


# -- fixture signatures (for annotations in test modules) ------------------------------
class StartRelay(Protocol):
    """The ``start_relay`` fixture."""

    def __call__(
        self,
        data_dir: Path | None = None,
        extra_args: list[str] | None = None,
        health_timeout: float = HEALTH_TIMEOUT_S,
        **env_overrides: str | None,
    ) -> Relay: ...


class RelayEnv(Protocol):
    """The ``relay_env`` fixture."""

    def __call__(self, data_dir: Path | None = None, **overrides: str | None) -> dict[str, str]: ...


#: The ``register`` fixture: ``register(relay=None, app_id="test-app") -> User``.
Register = Callable[..., User]


# Request bodies the tests send most (the mocks answer them in each provider's format).
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
CLAUDE = {
    "model": "claude-3-5-haiku-20241022",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def error_of(response: httpx.Response, status: int | tuple[int, ...]) -> str:
    """The relay's own refusal: this status (or one of these), a JSON body {"error":
    non-empty str}, never a framework-default {"detail": …}. Returns the message."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    assert body["error"].strip() and "Traceback" not in body["error"]
    assert "detail" not in body
    return str(body["error"])
