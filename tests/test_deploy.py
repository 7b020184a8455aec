"""The deployment files do what docs/deployment.md says: deploy/nginx.conf (run by a real
nginx) streams SSE unbuffered and gives the relay addresses it can trust; the
Dockerfile's HEALTHCHECK command works; the systemd unit and compose file are sound.
(No Docker engine here: the image itself is not built by the tests.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from backends import _wait_port, free_port
from providers.mock import SLOW_EVENTS, SLOW_INTERVAL_S
from providers.relay import FAKE_KEY, Relay, StartRelay, register_user

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


def test_dockerfile_basics() -> None:
    text = _dockerfile()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"^USER (?!root)\S+", text, re.M), "must run as a non-root user"
    assert "HOST=0.0.0.0" in text
    assert "HEALTHCHECK" in text
    assert (ROOT / ".dockerignore").read_text().count(".env") >= 1  # secrets stay out


def test_dockerfile_healthcheck_command(start_relay: StartRelay) -> None:
    """The HEALTHCHECK's command, run as Docker would: exit 0 when /health answers 200."""
    match = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", _dockerfile())
    assert match, "HEALTHCHECK ... CMD [json array] expected"
    argv = json.loads(match.group(1))
    assert argv[0] == "python"
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
