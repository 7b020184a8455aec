"""The `byok-relay` command as a user runs it: `python -m byok_relay ...` subprocesses in
temporary directories (init, migrate, doctor, serve). Variations of one command run
`byok_relay.cli.main()` in-process (same code path, no Python start-up each time)."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from providers.relay import INHERITED_ENV, TEST_ENCRYPTION_SECRET

from byok_relay import cli as cli_module
from byok_relay.config import Settings

#: How every byok-relay command that failed on purpose must look on stderr.
TRACEBACK = "Traceback (most recent call last)"


def cli_env(**overrides: str | None) -> dict[str, str]:
    """A clean environment: nothing of the outer shell's configuration leaks in."""
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_cli(
    cwd: Path, *args: str, timeout: float = 30, umask: int | None = None, **env: str | None
) -> subprocess.CompletedProcess[str]:
    """`python -m byok_relay *args` in `cwd` with a clean environment plus `env`."""

    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run(
        [sys.executable, "-m", "byok_relay", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        preexec_fn=set_umask if umask is not None else None,
        check=False,
    )


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class WouldServe(Exception):
    """`serve` got past configuration checking (the in-process runner never serves)."""


class InProcessCli:
    """`byok_relay.cli.main(args)` in this process, in a temporary working directory
    with no configuration variable set except the ones passed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
        self._mp = monkeypatch
        self._capsys = capsys

    def __call__(self, *args: str, **env: str | None) -> Result:
        self._capsys.readouterr()
        with self._mp.context() as m:
            for name, value in env.items():
                if value is None:
                    m.delenv(name, raising=False)
                else:
                    m.setenv(name, value)
            try:
                code = cli_module.main(list(args))
            except SystemExit as exc:  # argparse: --help, --version, usage errors
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        out, err = self._capsys.readouterr()
        return Result(code, out, err)


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Iterator[InProcessCli]:
    for name in list(os.environ):
        if name in Settings.model_fields or (
            name.startswith("PROVIDER_") and name.endswith("_BASE_URL")
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    def would_serve(*_args: object, **_kwargs: object) -> None:
        raise WouldServe("configuration accepted: serve would have started")

    monkeypatch.setattr(cli_module, "configure_logging", lambda *_a, **_k: None)
    monkeypatch.setattr(cli_module, "_startup_notes", would_serve)
    yield InProcessCli(monkeypatch, capsys)


def parse_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


# --- init -----------------------------------------------------------------------------------


def test_init_writes_private_env_with_fresh_secrets(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    ra = run_cli(a, "init", umask=0o000)  # even with a permissive umask
    rb = run_cli(b, "init")
    for r in (ra, rb):
        assert r.returncode == 0, r.stderr
        assert TRACEBACK not in r.stderr
    env_a, env_b = a / ".env", b / ".env"
    for path in (env_a, env_b):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
    va, vb = parse_env_file(env_a), parse_env_file(env_b)
    secret = va["ENCRYPTION_SECRET"]
    assert len(secret) >= 32 and re.fullmatch(r"[0-9a-f]+", secret)
    assert va["ENCRYPTION_SECRET"] != vb["ENCRYPTION_SECRET"]
    if "TOKEN_HMAC_SECRET" in va:
        assert len(va["TOKEN_HMAC_SECRET"]) >= 32
        assert va["TOKEN_HMAC_SECRET"] != vb["TOKEN_HMAC_SECRET"]
        assert va["TOKEN_HMAC_SECRET"] != secret
    # the secrets are not echoed on the terminal
    assert secret not in ra.stdout + ra.stderr


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "init").returncode == 0
    env_file = tmp_path / ".env"
    before = env_file.read_bytes()
    mtime = env_file.stat().st_mtime_ns
    r = run_cli(tmp_path, "init")
    assert r.returncode != 0
    assert ".env" in r.stderr and TRACEBACK not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert env_file.read_bytes() == before
    assert env_file.stat().st_mtime_ns == mtime
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


def test_init_never_overwrites_a_users_file(cli: InProcessCli, tmp_path: Path) -> None:
    mine = tmp_path / "mine.env"
    mine.write_text("PORT=1234\n")
    mine.chmod(0o644)
    r = cli("init", "--path", str(mine))
    assert r.returncode != 0
    assert mine.read_text() == "PORT=1234\n"
    assert stat.S_IMODE(mine.stat().st_mode) == 0o644


def test_init_does_not_follow_a_planted_symlink(cli: InProcessCli, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "victim"
    target.parent.mkdir()
    (tmp_path / ".env").symlink_to(target)  # dangling: Path.exists() says False
    r = cli("init")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ".env" in r.stderr
    assert not target.exists()


def test_init_path_option(cli: InProcessCli, tmp_path: Path) -> None:
    r = cli("init", "--path", "custom.env")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "custom.env").stat().st_mode) == 0o600
    assert not (tmp_path / ".env").exists()
    assert "ENCRYPTION_SECRET" in parse_env_file(tmp_path / "custom.env")


def test_init_stdout_prints_the_env_and_writes_no_file(tmp_path: Path) -> None:
    """`init --stdout` (the container path: `docker run --rm IMAGE byok-relay init --stdout
    > .env`): stdout is exactly a .env, nothing is written, an existing .env is no obstacle."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / ".env").write_text("PORT=1234\n")
    ra = run_cli(a, "init", "--stdout")
    rb = run_cli(b, "init", "--stdout")
    for r in (ra, rb):
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
        lines = [line for line in r.stdout.splitlines() if line.strip()]
        assert all(re.fullmatch(r"#.*|[A-Z_]+=\S+", line) for line in lines), r.stdout
    assert list(a.iterdir()) == []
    assert (b / ".env").read_text() == "PORT=1234\n"
    (a / "printed.env").write_text(ra.stdout)
    (b / "printed.env").write_text(rb.stdout)
    va, vb = parse_env_file(a / "printed.env"), parse_env_file(b / "printed.env")
    assert re.fullmatch(r"[0-9a-f]{64}", va["ENCRYPTION_SECRET"])
    assert re.fullmatch(r"[0-9a-f]{64}", va["TOKEN_HMAC_SECRET"])
    assert va["ENCRYPTION_SECRET"] != vb["ENCRYPTION_SECRET"]
    assert va["TOKEN_HMAC_SECRET"] not in (vb["TOKEN_HMAC_SECRET"], va["ENCRYPTION_SECRET"])


def test_init_stdout_is_a_complete_configuration(cli: InProcessCli, tmp_path: Path) -> None:
    r = cli("init", "--stdout")
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".env").write_text(r.stdout)
    doctor = cli("doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    both = cli("init", "--stdout", "--pkcs11")
    assert both.returncode != 0 and both.stdout == ""
    assert "--stdout" in both.stderr and len(both.stderr.strip().splitlines()) == 1


def test_init_then_doctor_and_migrate(cli: InProcessCli, tmp_path: Path) -> None:
    """The .env that init writes is a complete, valid configuration."""
    assert cli("init").returncode == 0
    doctor = cli("doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert not (tmp_path / "data").exists(), "doctor must not create the database"
    migrate = cli("migrate")
    assert migrate.returncode == 0, migrate.stderr
    assert (tmp_path / "data" / "relay.db").is_file()  # the documented default


# --- migrate --------------------------------------------------------------------------------


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "m" / "relay.db"
    env = {"ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET, "DATABASE_URL": f"sqlite:///{db}"}
    first = run_cli(tmp_path, "migrate", **env)
    assert first.returncode == 0, first.stderr
    assert "applied" in first.stdout.lower()
    assert db.is_file()
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert {"users", "tokens", "api_keys", "request_log", "schema_migrations"} <= tables
    assert versions and versions == sorted(set(versions))
    second = run_cli(tmp_path, "migrate", **env)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout.lower()
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations")] == versions


def test_migrate_with_bad_config_fails_cleanly(cli: InProcessCli) -> None:
    r = cli("migrate", ENCRYPTION_SECRET="short")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "ENCRYPTION_SECRET" in r.stderr


def test_migrate_unopenable_database_is_one_line(cli: InProcessCli) -> None:
    r = cli(
        "migrate",
        ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET,
        DATABASE_URL="sqlite:////proc/no-such-dir/relay.db",
    )
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "DATABASE_URL" in lines[0], r.stderr


# --- doctor -----------------------------------------------------------------------------------


def test_doctor_good_config(tmp_path: Path) -> None:
    r = run_cli(
        tmp_path,
        "doctor",
        ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET,
        DATABASE_URL=f"sqlite:///{tmp_path / 'd' / 'relay.db'}",
        APP_SECRET="an-app-secret-0123456789",
        ALLOWED_ORIGINS="https://app.example",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert TRACEBACK not in r.stderr
    assert "ERROR" not in r.stdout


def test_doctor_bad_config_subprocess(tmp_path: Path) -> None:
    r = run_cli(tmp_path, "doctor", ENCRYPTION_SECRET="too-short")
    assert r.returncode != 0
    assert "ENCRYPTION_SECRET" in r.stdout + r.stderr
    assert TRACEBACK not in r.stderr


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"ENCRYPTION_SECRET": None}, ["ENCRYPTION_SECRET"]),
        ({"ENCRYPTION_SECRET": "too-short"}, ["ENCRYPTION_SECRET"]),
        ({"RATE_LIMIT_RELAY": "banana"}, ["RATE_LIMIT_RELAY"]),
        ({"DATABASE_URL": "mysql://x"}, ["DATABASE_URL"]),
        ({"PROVIDERS_FILE": "/nonexistent/providers.toml"}, ["PROVIDERS_FILE"]),
        ({"DATABASE_URL": "sqlite:////proc/no-such-dir/relay.db"}, ["DATABASE_URL"]),
        ({"REDIS_URL": "redis://127.0.0.1:1/0"}, ["REDIS_URL"]),
        ({"PROVIDER_OPENAI_BASE_URL": "ftp://x"}, ["PROVIDER_OPENAI_BASE_URL"]),
    ],
    ids=lambda v: str(v)[:60],
)
def test_doctor_names_the_problem(
    cli: InProcessCli, tmp_path: Path, env: dict[str, str | None], names: list[str]
) -> None:
    base: dict[str, str | None] = {
        "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
    }
    r = cli("doctor", **{**base, **env})
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert any(name in out for name in names), out


def test_doctor_reports_bad_providers_file(cli: InProcessCli, tmp_path: Path) -> None:
    bad = tmp_path / "providers.toml"
    bad.write_text("[providers.acme\nbase_url = 1\n")
    r = cli(
        "doctor",
        ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET,
        DATABASE_URL=f"sqlite:///{tmp_path / 'relay.db'}",
        PROVIDERS_FILE=str(bad),
    )
    assert r.returncode != 0
    assert "PROVIDERS_FILE" in r.stdout + r.stderr


def test_doctor_checks_an_existing_database(cli: InProcessCli, tmp_path: Path) -> None:
    env = {
        "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
    }
    assert cli("migrate", **env).returncode == 0
    (tmp_path / "relay.db").chmod(0o644)
    r = cli("doctor", **env)
    assert r.returncode == 0, r.stdout + r.stderr  # a warning, not an error
    assert "chmod 600" in r.stdout and "schema version" in r.stdout
    r = cli("doctor", **env)
    assert "chmod 600" not in r.stdout  # opening it made it private


def test_doctor_good_config_in_process(cli: InProcessCli, tmp_path: Path) -> None:
    r = cli(
        "doctor",
        ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET,
        DATABASE_URL=f"sqlite:///{tmp_path / 'relay.db'}",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ERROR" not in r.stdout
    # the warnings a default configuration deserves are there
    assert "ALLOWED_ORIGINS" in r.stdout and "APP_SECRET" in r.stdout


# --- serve / top level -------------------------------------------------------------------------


def test_help_version_and_usage(cli: InProcessCli) -> None:
    r = cli("--version")
    assert r.returncode == 0 and "byok-relay" in r.stdout
    r = cli("serve", "--help")
    assert r.returncode == 0
    for flag in ("--host", "--port", "--workers"):
        assert flag in r.stdout
    for command in ("serve", "init", "migrate", "reencrypt", "doctor"):
        assert command in cli("--help").stdout
    assert cli("no-such-command").returncode != 0
    assert cli().returncode != 0


def test_serve_accepts_a_good_config(cli: InProcessCli, tmp_path: Path) -> None:
    """The in-process runner's guard works: a valid configuration reaches serving."""
    with pytest.raises(WouldServe):
        cli(
            "serve",
            "--port",
            "3999",
            ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET,
            DATABASE_URL=f"sqlite:///{tmp_path / 'relay.db'}",
        )
