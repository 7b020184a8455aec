"""What a new user trips over in the first hour, tried the way they meet it: CLI output
and HTTP answers from real relay processes (issue "The first hour")."""

from __future__ import annotations

import socket
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import Register, StartRelay
from providers.relay import (
    TEST_ENCRYPTION_SECRET,
    Relay,
    User,
    error_of,
    free_port,
    http_client,
)
from test_cli import TRACEBACK, run_cli

HTTP = http_client()

# A module on PYTHONPATH that shadows an installed optional package: the install
# without that extra, as a user who ran plain `pip install byok-relay` has it.
_NOT_INSTALLED = "raise ImportError('No module named {name}')\n"


def _without(tmp_path: Path, *modules: str) -> str:
    shadow = tmp_path / "shadow"
    shadow.mkdir(exist_ok=True)
    for name in modules:
        (shadow / f"{name}.py").write_text(_NOT_INSTALLED.format(name=name))
    return str(shadow)


def _one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert TRACEBACK not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("env", "module", "extra"),
    [
        ({"DATABASE_URL": "postgresql://relay@127.0.0.1:5432/test"}, "asyncpg", "postgres"),
        ({"REDIS_URL": "redis://127.0.0.1:6379/0"}, "redis", "redis"),
        ({"PKCS11_MODULE": "<a file>", "PKCS11_TOKEN_LABEL": "t", "PKCS11_PIN": "1234"},
         "pkcs11", "pkcs11"),
    ],
    ids=["postgres", "redis", "pkcs11"],
)  # fmt: skip
@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_missing_extra_is_one_line_naming_it(
    tmp_path: Path, env: dict[str, str], module: str, extra: str, command: str
) -> None:
    if env.get("PKCS11_MODULE") == "<a file>":
        (tmp_path / "libvendor-pkcs11.so").write_bytes(b"")
        env = {**env, "PKCS11_MODULE": str(tmp_path / "libvendor-pkcs11.so")}
    r = run_cli(
        tmp_path,
        command,
        ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET,
        PYTHONPATH=_without(tmp_path, module),
        **env,
    )
    line = _one_line(r)
    assert f"pip install 'byok-relay[{extra}]'" in line, line


def test_doctor_says_which_extra_to_install(tmp_path: Path) -> None:
    r = run_cli(
        tmp_path,
        "doctor",
        ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET,
        REDIS_URL="redis://127.0.0.1:6379/0",
        PYTHONPATH=_without(tmp_path, "redis"),
    )
    assert r.returncode == 1
    assert "pip install 'byok-relay[redis]'" in r.stdout
    assert "not reachable" not in r.stdout
    assert TRACEBACK not in r.stdout + r.stderr


def test_missing_secret_says_where_it_looked(tmp_path: Path) -> None:
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    line = _one_line(run_cli(elsewhere, "serve", ENCRYPTION_SECRET=None))
    assert "ENCRYPTION_SECRET" in line
    assert f"there is no {elsewhere.resolve() / '.env'}" in line, line
    # with a .env that lacks it, the message names that file
    (elsewhere / ".env").write_text("PORT=3999\n")
    line = _one_line(run_cli(elsewhere, "serve", ENCRYPTION_SECRET=None))
    assert f"set neither in the environment nor in {elsewhere.resolve() / '.env'}" in line, line


def test_unopenable_sqlite_is_one_clean_line(tmp_path: Path) -> None:
    r = run_cli(
        tmp_path,
        "serve",
        "--port",
        str(free_port()),
        ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET,
        DATABASE_URL="sqlite:////proc/no-such-dir/relay.db",
    )
    assert r.returncode == 2, r.stderr
    assert "DATABASE_URL: cannot open the database" in r.stderr
    assert "Unclosed" not in r.stdout + r.stderr
    assert '"level":"error"' not in r.stdout


def test_every_subcommand_describes_itself(tmp_path: Path) -> None:
    for command in ("serve", "init", "migrate", "reencrypt", "doctor"):
        r = run_cli(tmp_path, command, "--help")
        assert r.returncode == 0, r.stderr
        _, _, rest = r.stdout.partition("\n\n")
        description = rest.split("\n\n")[0]
        assert len(description) > 40 and not description.startswith("options"), (command, r.stdout)
    r = run_cli(tmp_path, "reencrypt", "--help")
    assert "--batch-size BATCH_SIZE\n" in r.stdout and "per database transaction" in r.stdout


# --- the running relay ----------------------------------------------------------------


def test_text_logs_print_the_url_to_open(start_relay: StartRelay) -> None:
    server = start_relay(LOG_FORMAT="text")
    assert HTTP.get(f"{server.url}/health", timeout=10).status_code == 200
    text = server.log_text()
    assert f"byok-relay listening  url={server.url}/" in text, text
    assert "GET /health 200 " in text  # the access line, readable
    assert '{"ts"' not in text


def test_json_logs_stay_the_default_off_a_terminal(relay: Relay) -> None:
    # the session relay's log is a file: JSON, with the URL as a field
    assert '"msg":"byok-relay listening","url":"http://127.0.0.1:' in relay.log_text()


def test_no_server_banner(relay: Relay) -> None:
    r = HTTP.get(f"{relay.url}/health", timeout=10)
    assert r.headers["server"] == "byok-relay"
    # the HTTP parser's own refusal too (no app hook sees it)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        sock.sendall(b"NOT-HTTP\r\n\r\n")
        head = sock.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.") and " 400 " in head.split("\r\n")[0]
    assert "server: byok-relay" in head.lower() and "aiohttp" not in head.lower()


def test_database_files_are_private(start_relay: StartRelay, tmp_path: Path) -> None:
    server = start_relay(data_dir=tmp_path)
    assert HTTP.post(f"{server.url}/users", json={"app_id": "t"}, timeout=10).status_code == 200
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("relay.db"))
    assert files == ["relay.db", "relay.db-shm", "relay.db-wal"], files
    for name in files:
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))


def test_a_provider_typo_is_named_before_the_body(user: User) -> None:
    r = HTTP.post(
        f"{user.relay.url}/keys/opnai", json={"key": "sk"}, headers=user.headers, timeout=10
    )
    message = error_of(r, 400)
    assert message.startswith('Unsupported provider "opnai". Did you mean "openai"?'), message
    assert "key" not in message.split("Supported:")[0].lower().replace("unsupported", "")


def test_a_base_url_without_its_version_gets_a_hint(user: User) -> None:
    r = HTTP.post(
        f"{user.relay.url}/relay/openai/chat/completions",
        json={"model": "gpt-4o-mini", "messages": []},
        headers=user.headers,
        timeout=10,
    )
    message = error_of(r, 403)
    assert 'Did you mean "/v1/chat/completions"?' in message, message


@pytest.mark.parametrize(
    ("base_url", "hint"),
    [
        ("http://localhost:11434/v1", True),  # Ollama on the developer's machine
        ("https://192.168.1.20/v1", True),  # a LAN host
        ("https://169.254.169.254/v1", False),  # cloud metadata: no setting admits it
    ],
)
def test_private_upstream_refusal_names_the_setting_only_where_it_helps(
    user: User, base_url: str, hint: bool
) -> None:
    r = HTTP.post(
        f"{user.relay.url}/keys/openai-compatible",
        json={"key": "sk-fake-local-model", "base_url": base_url},
        headers=user.headers,
        timeout=10,
    )
    message = error_of(r, 400)
    assert ("ALLOW_PRIVATE_UPSTREAMS=true" in message) is hint, message


def test_no_key_refusal_has_a_code(register: Register) -> None:
    user = register()
    r = HTTP.post(
        f"{user.relay.url}/relay/openai/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": []},
        headers=user.headers,
        timeout=10,
    )
    error_of(r, 400)
    assert r.json()["code"] == "no_key" and r.json()["provider"] == "openai"
