"""Configuration: a bad value stops `serve` with one stderr line naming the variable;
DB_PATH, DATABASE_URL forms, `.env` reading and environment-over-.env precedence."""

from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import StartRelay
from providers.relay import TEST_ENCRYPTION_SECRET, free_port, http_client, register_user
from test_cli import TRACEBACK, InProcessCli, WouldServe, cli_env, run_cli
from test_cli import cli as cli

HTTP = http_client()  # one shared keep-alive client (no per-call SSL setup)

BUSY_PORT = "<a port another process listens on>"

#: The cases run as real `python -m byok_relay serve` processes (concurrently).
SERVE_SUBPROCESS: list[tuple[str, dict[str, str | None], str]] = [
    ("secret-missing", {"ENCRYPTION_SECRET": None}, "ENCRYPTION_SECRET"),
    ("secret-short", {"ENCRYPTION_SECRET": "x" * 31}, "ENCRYPTION_SECRET"),
    ("port-abc", {"PORT": "abc"}, "PORT"),
    ("rate-relay", {"RATE_LIMIT_RELAY": "banana"}, "RATE_LIMIT_RELAY"),
    ("db-mysql", {"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ("providers-file", {"PROVIDERS_FILE": "/nonexistent"}, "PROVIDERS_FILE"),
    # valid values the relay cannot start with: still one line naming the variable
    ("db-unopenable", {"DATABASE_URL": "sqlite:////proc/no-such-dir/relay.db"}, "DATABASE_URL"),
    ("port-in-use", {"PORT": BUSY_PORT}, "PORT"),
]
_IN_PROCESS_ONLY = ("db-unopenable", "port-in-use")  # these pass config checking

#: More bad values, through `cli.main(["serve"])` in-process (same code path).
SERVE_IN_PROCESS: list[tuple[str, dict[str, str | None], str]] = [
    *(case for case in SERVE_SUBPROCESS if case[0] not in _IN_PROCESS_ONLY),
    ("secret-empty", {"ENCRYPTION_SECRET": ""}, "ENCRYPTION_SECRET"),
    ("port-range", {"PORT": "70000"}, "PORT"),
    ("port-zero", {"PORT": "0"}, "PORT"),
    ("rate-global", {"RATE_LIMIT_GLOBAL": "100/fortnight"}, "RATE_LIMIT_GLOBAL"),
    ("rate-register", {"RATE_LIMIT_REGISTER": ""}, "RATE_LIMIT_REGISTER"),
    ("rate-relay-zero", {"RATE_LIMIT_RELAY": "0/minute"}, "RATE_LIMIT_RELAY"),
    ("db-empty-sqlite", {"DATABASE_URL": "sqlite://relative.db"}, "DATABASE_URL"),
    ("providers-dir", {"PROVIDERS_FILE": "/"}, "PROVIDERS_FILE"),
    ("expiry-negative", {"TOKEN_EXPIRY_DAYS": "-1"}, "TOKEN_EXPIRY_DAYS"),
    ("expiry-text", {"TOKEN_EXPIRY_DAYS": "ninety"}, "TOKEN_EXPIRY_DAYS"),
    # would overflow the 64-bit ms timestamp: every registration a 500
    ("expiry-huge", {"TOKEN_EXPIRY_DAYS": "1000000000000"}, "TOKEN_EXPIRY_DAYS"),
    ("retention-huge", {"REQUEST_LOG_RETENTION_DAYS": "10" * 10}, "REQUEST_LOG_RETENTION_DAYS"),
    ("body-limit", {"REQUEST_BODY_LIMIT_BYTES": "lots"}, "REQUEST_BODY_LIMIT_BYTES"),
    ("body-limit-tiny", {"REQUEST_BODY_LIMIT_BYTES": "10"}, "REQUEST_BODY_LIMIT_BYTES"),
    ("log-level", {"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ("trusted-proxies", {"TRUSTED_PROXIES": "not-a-cidr"}, "TRUSTED_PROXIES"),
    ("private-bool", {"ALLOW_PRIVATE_UPSTREAMS": "maybe"}, "ALLOW_PRIVATE_UPSTREAMS"),
    ("redis-url", {"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
    ("timeout", {"UPSTREAM_TIMEOUT_S": "0"}, "UPSTREAM_TIMEOUT_S"),
    ("cache-ttl", {"CACHE_TTL_S": "-1"}, "CACHE_TTL_S"),
    ("workers", {"WORKERS": "0"}, "WORKERS"),
    ("grace", {"SHUTDOWN_GRACE_S": "soon"}, "SHUTDOWN_GRACE_S"),
    ("hmac-short", {"TOKEN_HMAC_SECRET": "short"}, "TOKEN_HMAC_SECRET"),
    ("previous-short", {"ENCRYPTION_SECRET_PREVIOUS": "short"}, "ENCRYPTION_SECRET_PREVIOUS"),
    ("provider-url", {"PROVIDER_OPENAI_BASE_URL": "ftp://x"}, "PROVIDER_OPENAI_BASE_URL"),
    ("app-secret", {"APP_SECRET": "has a space"}, "APP_SECRET"),
    ("retention", {"REQUEST_LOG_RETENTION_DAYS": "-5"}, "REQUEST_LOG_RETENTION_DAYS"),
    (
        "rollup-retention",
        {"REQUEST_LOG_ROLLUP_RETENTION_DAYS": "-1"},
        "REQUEST_LOG_ROLLUP_RETENTION_DAYS",
    ),
    (
        "rollup-retention-huge",
        {"REQUEST_LOG_ROLLUP_RETENTION_DAYS": "36501"},
        "REQUEST_LOG_ROLLUP_RETENTION_DAYS",
    ),
    ("host-empty", {"HOST": ""}, "HOST"),
    ("origins-bare-host", {"ALLOWED_ORIGINS": "app.example.com"}, "ALLOWED_ORIGINS"),
    ("origins-path", {"ALLOWED_ORIGINS": "https://a.example/app"}, "ALLOWED_ORIGINS"),
]


@pytest.mark.parametrize(
    "env",
    [
        {"ALLOWED_ORIGINS": "https://a.example, http://localhost:5173/ ,null"},
        {"ALLOWED_ORIGINS": "*"},
        {"RATE_LIMIT_RELAY": "5 per second", "RATE_LIMIT_GLOBAL": "1/minute"},
        {"TOKEN_EXPIRY_DAYS": "0", "TRUSTED_PROXIES": "10.0.0.0/8, 192.168.0.0/16"},
        {"TRUSTED_PROXIES": "2", "ALLOW_PRIVATE_UPSTREAMS": "true"},
        {"DATABASE_URL": None, "DB_PATH": "x.db"},
        {"TOKEN_EXPIRY_DAYS": "36500", "REQUEST_LOG_RETENTION_DAYS": "0"},
        {"REQUEST_LOG_RETENTION_DAYS": "1", "REQUEST_LOG_ROLLUP_RETENTION_DAYS": "400"},
    ],
    ids=repr,
)
def test_good_values_accepted(cli: InProcessCli, tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(WouldServe):
        cli("serve", **{**_base_env(tmp_path), **env})


def _base_env(cwd: Path) -> dict[str, str | None]:
    return {
        "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET,
        "DATABASE_URL": f"sqlite:///{cwd / 'relay.db'}",
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
    }


def _serve(cwd: Path, env: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    """`serve` with a bad value must exit at once; one that starts is killed after 90 s."""
    try:
        return run_cli(cwd, "serve", timeout=90, **{**_base_env(cwd), **env})
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(exc.cmd, -1, "", "(still running after 90 s)")


@pytest.fixture(scope="module")
def bad_serves(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Every SERVE_SUBPROCESS case run once, concurrently (each is a Python start-up)."""
    dirs = {case: tmp_path_factory.mktemp(f"bad-{case}") for case, _, _ in SERVE_SUBPROCESS}
    with socket.socket() as busy, ThreadPoolExecutor(max_workers=len(SERVE_SUBPROCESS)) as pool:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = str(busy.getsockname()[1])
        futures = {
            case: pool.submit(
                _serve,
                dirs[case],
                {k: busy_port if v == BUSY_PORT else v for k, v in env.items()},
            )
            for case, env, _ in SERVE_SUBPROCESS
        }
        results = {case: f.result() for case, f in futures.items()}
    yield results


def _assert_one_line_naming(returncode: int, stdout: str, stderr: str, var: str) -> None:
    assert returncode not in (0, -1), (returncode, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert re.search(rf"\b{re.escape(var)}\b", lines[0]), lines[0]
    assert TRACEBACK not in stderr
    assert TEST_ENCRYPTION_SECRET not in stderr + stdout


@pytest.mark.parametrize(("case", "var"), [(c, v) for c, _, v in SERVE_SUBPROCESS])
def test_bad_value_stops_serve_with_one_line(
    bad_serves: dict[str, subprocess.CompletedProcess[str]], case: str, var: str
) -> None:
    r = bad_serves[case]
    _assert_one_line_naming(r.returncode, r.stdout, r.stderr, var)
    if case == "secret-short":
        assert "x" * 31 not in r.stderr  # a secret's value is never echoed


@pytest.mark.parametrize(
    ("env", "var"),
    [(e, v) for _, e, v in SERVE_IN_PROCESS],
    ids=[c for c, _, _ in SERVE_IN_PROCESS],
)
def test_bad_value_in_process(
    cli: InProcessCli, tmp_path: Path, env: dict[str, str | None], var: str
) -> None:
    r = cli("serve", **{**_base_env(tmp_path), **env})
    _assert_one_line_naming(r.returncode, r.stdout, r.stderr, var)


def test_bad_value_in_dotenv_names_the_variable(cli: InProcessCli, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"ENCRYPTION_SECRET={TEST_ENCRYPTION_SECRET}\nRATE_LIMIT_RELAY=banana\n"
    )
    r = cli("serve")
    _assert_one_line_naming(r.returncode, r.stdout, r.stderr, "RATE_LIMIT_RELAY")


def test_bad_flag_value_names_the_option(cli: InProcessCli, tmp_path: Path) -> None:
    r = cli("serve", "--port", "99999", **_base_env(tmp_path))
    assert r.returncode != 0
    assert "PORT" in r.stderr.upper()
    assert len([line for line in r.stderr.splitlines() if line.strip()]) == 1, r.stderr


# --- where the database is ------------------------------------------------------------------


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_db_path_used_when_database_url_unset(cli: InProcessCli, tmp_path: Path) -> None:
    env = {"ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET}
    # relative DB_PATH: relative to the working directory
    r = cli("migrate", DB_PATH="rel/dir/ref.db", **env)
    assert r.returncode == 0, r.stderr
    assert "users" in _tables(tmp_path / "rel" / "dir" / "ref.db")
    # absolute DB_PATH
    absolute = tmp_path / "abs" / "ref.db"
    r = cli("migrate", DB_PATH=str(absolute), **env)
    assert r.returncode == 0, r.stderr
    assert "users" in _tables(absolute)
    # DATABASE_URL wins over DB_PATH
    other = tmp_path / "url.db"
    r = cli("migrate", DB_PATH="ignored.db", DATABASE_URL=f"sqlite:///{other}", **env)
    assert r.returncode == 0, r.stderr
    assert other.is_file() and not (tmp_path / "ignored.db").exists()
    # neither set: the default ./data/relay.db
    r = cli("migrate", **env)
    assert r.returncode == 0, r.stderr
    assert "users" in _tables(tmp_path / "data" / "relay.db")


def test_database_url_relative_and_absolute(cli: InProcessCli, tmp_path: Path) -> None:
    env = {"ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET}
    r = cli("migrate", DATABASE_URL="sqlite:///./sub/rel.db", **env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sub" / "rel.db").is_file()
    r = cli("migrate", DATABASE_URL="sqlite:///sub/rel2.db", **env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sub" / "rel2.db").is_file()
    absolute = tmp_path / "abs4" / "a.db"
    r = cli("migrate", DATABASE_URL=f"sqlite:////{str(absolute)[1:]}", **env)
    assert r.returncode == 0, r.stderr
    assert absolute.is_file()


def test_db_path_subprocess(tmp_path: Path) -> None:
    """The same through a real `python -m byok_relay migrate`."""
    r = run_cli(tmp_path, "migrate", ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET, DB_PATH="x/r.db")
    assert r.returncode == 0, r.stderr
    assert "users" in _tables(tmp_path / "x" / "r.db")


def test_serve_with_db_path(start_relay: StartRelay, tmp_path: Path) -> None:
    db = tmp_path / "via-db-path.db"
    server = start_relay(DATABASE_URL=None, DB_PATH=str(db))
    assert server.db_path == db
    user = register_user(server, "db-path-app")
    user.store_key("openai", "sk-db-path-test-0001")
    with sqlite3.connect(db) as conn:
        assert conn.execute(
            "SELECT count(*) FROM users WHERE app_id = 'db-path-app'"
        ).fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone() == (1,)


# --- .env ------------------------------------------------------------------------------------


def test_dotenv_is_read_and_environment_wins(cli: InProcessCli, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# comment\n"
        f"ENCRYPTION_SECRET={TEST_ENCRYPTION_SECRET}\n"
        "DATABASE_URL=sqlite:///./from-dotenv.db\n"
        "PORT=not-a-port\n"
    )
    # PORT from .env is invalid: the environment's valid PORT overrides it
    r = cli("migrate", PORT="3001")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "from-dotenv.db").is_file()
    # without the override the .env value is read (and refused, by name)
    r = cli("migrate")
    assert r.returncode != 0 and "PORT" in r.stderr
    # the environment's DATABASE_URL beats the .env's
    r = cli("migrate", PORT="3001", DATABASE_URL="sqlite:///./from-env.db")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "from-env.db").is_file()


def test_dotenv_provider_override_and_env_override(cli: InProcessCli, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"ENCRYPTION_SECRET={TEST_ENCRYPTION_SECRET}\n"
        f"DATABASE_URL=sqlite:///{tmp_path / 'relay.db'}\n"
        "PROVIDER_OPENAI_BASE_URL=http://127.0.0.1:9/from-dotenv\n"
        "PROVIDER_GROQ_BASE_URL=http://127.0.0.1:9/groq-from-dotenv\n"
    )
    r = cli("doctor", PROVIDER_OPENAI_BASE_URL="http://127.0.0.1:9/from-env")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "from-env" in out and "/from-dotenv" not in out
    assert "groq-from-dotenv" in out


def test_dotenv_serves(start_relay: StartRelay, tmp_path: Path) -> None:
    """A relay configured only by its .env (secret and database) starts and keeps data
    where the .env says."""
    db = tmp_path / "dotenv-relay.db"
    (tmp_path / ".env").write_text(
        f"ENCRYPTION_SECRET={TEST_ENCRYPTION_SECRET}\nDATABASE_URL=sqlite:///{db}\n"
    )
    server = start_relay(data_dir=tmp_path, ENCRYPTION_SECRET=None, DATABASE_URL=None)
    r = HTTP.post(f"{server.url}/users", json={"app_id": "dotenv"}, timeout=10)
    assert r.status_code == 200, r.text
    assert db.is_file()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)


def test_cli_env_is_clean() -> None:
    """Harness sanity: the subprocess environment has no outer configuration."""
    env = cli_env()
    assert "ENCRYPTION_SECRET" not in env and "DATABASE_URL" not in env
    assert sys.executable
