"""The deployment files do what docs/deployment.md says: deploy/nginx.conf (run by a real
nginx) streams SSE unbuffered and gives the relay addresses it can trust; the
Dockerfile's HEALTHCHECK command works; the systemd unit and compose file are sound; the
one-click deploy descriptors (render.yaml, railway.toml, fly.toml) build the Dockerfile,
keep the database on persistent storage or PostgreSQL, check a /health the relay serves,
and configure a relay that starts. (The image itself is built and run by
tests/test_container.py, from .ci/container-test.sh.)"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from backends import _wait_port, free_port
from providers.mock import SLOW_EVENTS, SLOW_INTERVAL_S
from providers.relay import (
    FAKE_KEY,
    TEST_ENCRYPTION_SECRET,
    Relay,
    StartRelay,
    fake_secret,
    register_user,
)

from byok_relay.config import Settings

ROOT = Path(__file__).resolve().parent.parent
CHAT_PATH = "/relay/openai/v1/chat/completions"


# --- nginx ---------------------------------------------------------------------------------
def _nginx(relay_port: int, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        pytest.skip("nginx is not installed")
    port = free_port()
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server relay:3000;" in site and "listen 80;" in site
    site = site.replace("server relay:3000;", f"server 127.0.0.1:{relay_port};")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o777)
    (workdir / "site.conf").write_text(site)
    temp = "".join(
        f"{kind}_temp_path {workdir}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (workdir / "nginx.conf").write_text(
        f"worker_processes 1;\ndaemon off;\npid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log warn;\nevents {{ worker_connections 256; }}\n"
        f"http {{\naccess_log off;\n{temp}include {workdir}/site.conf;\n}}\n"
    )
    proc = subprocess.Popen(
        [nginx, "-c", str(workdir / "nginx.conf"), "-p", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    if not _wait_port(port, 10):
        proc.kill()
        err = proc.stderr.read().decode() if proc.stderr else ""
        pytest.fail(f"nginx did not start: {err}")
    return proc, port


@pytest.fixture
def behind_nginx(start_relay: StartRelay, tmp_path: Path) -> Iterator[tuple[Relay, str]]:
    relay = start_relay(TRUSTED_PROXIES="1", RATE_LIMIT_GLOBAL="4/minute")
    proc, port = _nginx(relay.port, tmp_path / "nginx")
    try:
        yield relay, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_nginx_streams_sse_unbuffered(behind_nginx: tuple[Relay, str]) -> None:
    relay, url = behind_nginx
    user = register_user(relay)
    user.store_key("openai", FAKE_KEY)
    body = {"model": "mock-slow", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    arrivals: list[float] = []
    with (
        httpx.Client(base_url=url, trust_env=False, timeout=20) as client,
        client.stream("POST", CHAT_PATH, json=body, headers=user.headers) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        started = time.perf_counter()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.perf_counter() - started)
    assert len(arrivals) >= SLOW_EVENTS
    spread = arrivals[-1] - arrivals[0]
    # Events arrive as they are sent (spread over the stream), not in one buffered lump.
    assert spread >= 0.5 * (SLOW_EVENTS - 1) * SLOW_INTERVAL_S, arrivals
    distinct = len({round(a, 2) for a in arrivals})
    assert distinct >= SLOW_EVENTS // 3, arrivals


def test_nginx_forwarded_for_cannot_be_forged(behind_nginx: tuple[Relay, str]) -> None:
    """TRUSTED_PROXIES=1 behind deploy/nginx.conf: the relay takes the address nginx saw,
    so a client that forges X-Forwarded-For still hits its own per-IP limit."""
    _relay, url = behind_nginx
    with httpx.Client(base_url=url, trust_env=False, timeout=10) as client:
        codes = [
            client.get("/version", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
            for i in range(6)
        ]
    assert codes[:4] == [200] * 4 and codes[4:] == [429, 429], codes


# --- Dockerfile ------------------------------------------------------------------------------
def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", _dockerfile(), re.M)
    assert match, f"Dockerfile: ARG {name}=<default> expected"
    return match.group(1)


def test_dockerfile_basics() -> None:
    text = _dockerfile()
    # The base is an ARG (a locally made Debian base in CI), python:3.11-slim by default.
    assert _dockerfile_arg("BASE_IMAGE") == "python:3.11-slim"
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms == ["${BASE_IMAGE}", "${BASE_IMAGE}"], froms
    assert not re.search(r"^(RUN|HEALTHCHECK|CMD).*\bpython\b(?!3)", text, re.M), (
        "use python3: the Debian base has no `python`"
    )
    # It starts as an unprivileged user unless a platform build asks for root (RUN_AS).
    assert re.search(r"^USER \$\{RUN_AS\}$", text, re.M)
    assert not _dockerfile_arg("RUN_AS").startswith(("root", "0"))
    assert "HOST=0.0.0.0" in text
    assert "HEALTHCHECK" in text
    assert re.search(r'^ENTRYPOINT \["byok-relay-entrypoint"\]$', text, re.M)
    assert "COPY deploy/container-entrypoint.sh /usr/local/bin/byok-relay-entrypoint" in text
    assert (ROOT / ".dockerignore").read_text().count(".env") >= 1  # secrets stay out


def test_entrypoint_script_is_sound() -> None:
    """deploy/container-entrypoint.sh (run for real inside the image by test_container.py):
    valid sh, drops root with setpriv to the relay user, execs so the relay is PID 1."""
    script = ROOT / "deploy" / "container-entrypoint.sh"
    assert script.stat().st_mode & 0o111, "must be executable"
    check = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = script.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert "exec setpriv --reuid=relay --regid=relay" in text
    assert text.rstrip().endswith('exec "$@"')


def test_dockerfile_healthcheck_command(start_relay: StartRelay) -> None:
    """The HEALTHCHECK's command, run as Docker would: exit 0 when /health answers 200."""
    match = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", _dockerfile())
    assert match, "HEALTHCHECK ... CMD [json array] expected"
    argv = json.loads(match.group(1))
    assert argv[0] == "python3"
    argv[0] = sys.executable
    relay = start_relay()
    ok = subprocess.run(argv, env={"PORT": str(relay.port)}, timeout=10, capture_output=True)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run(argv, env={"PORT": str(free_port())}, timeout=10, capture_output=True)
    assert down.returncode != 0


# --- systemd and compose -------------------------------------------------------------------
def test_systemd_unit() -> None:
    unit = ROOT / "deploy" / "byok-relay.service"
    text = unit.read_text()
    grace = 30
    stop = int(re.search(r"^TimeoutStopSec=(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    assert stop > grace
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "User=", "KillSignal=SIGTERM"):
        assert option in text
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "is not executable" not in line  # the venv is not installed here
    ]
    assert problems == [], problems


def test_compose_file() -> None:
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = spec["services"]
    assert {"relay", "postgres", "redis", "nginx"} <= set(services)
    relay = services["relay"]
    env = relay["environment"]
    assert env["DATABASE_URL"].startswith("postgresql://")
    assert env["REDIS_URL"].startswith("redis://")
    assert env["TRUSTED_PROXIES"] == "1"
    grace = float(env["SHUTDOWN_GRACE_S"])
    assert float(relay["stop_grace_period"].rstrip("s")) > grace
    assert relay["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    mounts = services["nginx"]["volumes"]
    assert any(m.startswith("./deploy/nginx.conf:") for m in mounts)


# --- one-click deploy descriptors (render.yaml, railway.toml, fly.toml) -----------------------
GRACE_S = float(Settings.model_fields["SHUTDOWN_GRACE_S"].default)
#: What a platform generates for a secret: Render's generateValue is a base64-encoded 256-bit
#: value (this one is derived from a label, so obviously fake); init --stdout prints hex.
PLATFORM_SECRET = base64.b64encode(hashlib.sha256(b"byok-relay render generateValue").digest())


def _render() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    spec: dict[str, Any] = yaml.safe_load((ROOT / "render.yaml").read_text())
    return spec


def _toml(name: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / name).read_text())


def _is_the_dockerfile(path: str) -> None:
    assert (ROOT / path).resolve() == (ROOT / "Dockerfile").resolve(), path


def _image_default(pattern: str) -> str:
    match = re.search(pattern, _dockerfile(), re.M)
    assert match, pattern
    return match.group(1)


def _volume() -> str:
    return _image_default(r'^VOLUME \["([^"]+)"\]$')


def _port() -> int:
    return int(_image_default(r"^EXPOSE (\d+)$"))


def _sqlite_dir(url: str) -> str:
    assert url.startswith("sqlite:////"), url
    return str(Path(url.removeprefix("sqlite:///")).parent)


def _render_web() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    (web,) = [s for s in _render()["services"] if s["type"] == "web"]
    return web, {e["key"]: e for e in web["envVars"]}


def test_render_blueprint() -> None:
    spec = _render()
    web, env = _render_web()
    assert web["runtime"] == "docker"
    _is_the_dockerfile(web["dockerfilePath"])
    assert (ROOT / web["dockerContext"]).resolve() == ROOT
    assert web["healthCheckPath"] == "/health"
    # Render generates the secrets; none is written in the file.
    for name in ("ENCRYPTION_SECRET", "TOKEN_HMAC_SECRET"):
        assert env[name] == {"key": name, "generateValue": True}
    # The database is Render's PostgreSQL, declared in the same Blueprint.
    database = env["DATABASE_URL"]["fromDatabase"]
    assert database["property"] == "connectionString"
    assert database["name"] in {d["name"] for d in spec["databases"]}
    assert env["ALLOWED_ORIGINS"].get("sync") is False  # asked for at deploy time
    assert int(env["PORT"]["value"]) == _port()
    assert web["maxShutdownDelaySeconds"] > float(env["SHUTDOWN_GRACE_S"]["value"])


def test_railway_config() -> None:
    spec = _toml("railway.toml")
    assert spec["build"]["builder"] == "DOCKERFILE"
    _is_the_dockerfile(spec["build"]["dockerfilePath"])
    deploy = spec["deploy"]
    assert deploy["healthcheckPath"] == "/health"
    # No deploy without a volume at /data, where the image keeps its SQLite file.
    assert deploy["requiredMountPath"] == _volume() == "/data"
    assert _sqlite_dir(_image_default(r"^\s+DATABASE_URL=(\S+)")) == "/data"
    assert deploy["drainingSeconds"] > GRACE_S


def test_fly_config() -> None:
    spec = _toml("fly.toml")
    _is_the_dockerfile(spec["build"]["dockerfile"])
    # Fly volumes are root-owned: the image starts as root and its entrypoint drops to uid
    # 10001 (tests/test_container.py runs exactly this build against a root-owned /data).
    assert spec["build"]["args"]["RUN_AS"] == "root"
    assert _dockerfile_arg("RUN_AS")
    mount = spec["mounts"]
    assert mount["destination"] == _volume() == "/data" and mount["source"]
    assert _sqlite_dir(spec["env"]["DATABASE_URL"]) == "/data"
    service = spec["http_service"]
    assert service["internal_port"] == int(spec["env"]["PORT"]) == _port()
    (check,) = service["checks"]
    assert check["path"] == "/health" and check.get("method", "GET") == "GET"
    assert spec["kill_signal"] == _image_default(r"^STOPSIGNAL (\S+)$") == "SIGTERM"
    assert spec["kill_timeout"] > GRACE_S


def _descriptor_env(platform: str) -> tuple[str, dict[str, str]]:
    """(health-check path, the relay's environment) as each platform would run it."""
    if platform == "render":
        web, env = _render_web()
        values = {k: str(e["value"]) for k, e in env.items() if "value" in e}
        generated = {k: PLATFORM_SECRET.decode() for k, e in env.items() if e.get("generateValue")}
        database = "postgresql://relay:not-a-password@byok-relay-db.invalid/relay"
        return web["healthCheckPath"], {**values, **generated, "DATABASE_URL": database}
    init = {"ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET, "TOKEN_HMAC_SECRET": fake_secret("hmac")}
    if platform == "railway":  # the variables railway.toml's header says to set
        deploy = _toml("railway.toml")["deploy"]
        return deploy["healthcheckPath"], {**init, "TRUSTED_PROXIES": "1"}
    spec = _toml("fly.toml")
    return spec["http_service"]["checks"][0]["path"], {**init, **spec["env"]}


@pytest.mark.parametrize("platform", ["render", "railway", "fly"])
def test_descriptor_configures_a_relay_that_passes_its_check(
    platform: str, start_relay: StartRelay, tmp_path: Path
) -> None:
    """The platform's environment is a valid configuration (checked as the relay checks it at
    start), and a relay running with it answers the platform's health check with 200."""
    path, env = _descriptor_env(platform)
    check = subprocess.run(
        [sys.executable, "-c", "from byok_relay.config import load_settings; load_settings(None)"],
        env={"PATH": os.environ.get("PATH", ""), **env},
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    # The storage is the harness's (no /data here, no PostgreSQL server named in the file).
    overrides: dict[str, Any] = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "PORT")}
    relay = start_relay(**overrides)
    with httpx.Client(base_url=relay.url, trust_env=False, timeout=10) as client:
        assert client.get(path).status_code == 200
