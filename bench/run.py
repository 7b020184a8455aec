#!/usr/bin/env python3
"""byok-relay benchmark: the relay with every feature on, against direct-to-mock.

    .venv/bin/python bench/run.py            # full run (~5 minutes)
    .venv/bin/python bench/run.py --quick    # short run (~2 minutes)

Starts its own mocks (nginx for non-streaming JSON, bench/mock_sse.py for SSE and idle
streams), the relay (`python -m byok_relay serve`, one worker, from this checkout's
src/), and the load generators (wrk; bench/sse_client.py). Prints one table of relay vs
direct-to-mock numbers measured in the same run and writes bench/results/<timestamp>.json.
See bench/README.md for what every number means. Not a test: no timing asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SRC = REPO / "src"
RESULTS = BENCH / "results"
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Fake secrets: the bench never talks to a real provider.
ENCRYPTION_SECRET = "bench-fake-encryption-secret-" + "0123456789abcdef" * 2 + "xyz0123"
APP_SECRET = "bench-fake-app-secret-0123456789"
PROVIDER_KEY = "sk-bench-FAKE-0000000000"
ORIGIN = "https://app.example"
HUGE = "100000000/minute"
CHAT_BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}]}'
STATIC_JSON = (
    '{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    '"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant",'
    '"content":"Hello! How can I help you today?"},"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}'
)
RELAY_CHAT = "/relay/openai/v1/chat/completions"
DIRECT_CHAT = "/v1/chat/completions"

# ---------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reachable(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        if reachable(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def proc_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
    return pids


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree (all threads included), in seconds."""
    ticks = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError):
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / CLK_TCK


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of one process, keyed 'main' or 'tid:comm'."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                    raw = fh.read()
                comm = raw[raw.index("(") + 1 : raw.rindex(")")]
                fields = raw.rsplit(")", 1)[1].split()
                name = "main" if int(tid) == pid else f"{tid}:{comm}"
                out[name] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def rss_bytes(pid: int) -> int:
    total = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError):
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
    return total


def listen_overflows() -> int | None:
    """TcpExt ListenOverflows: connections dropped because an accept queue was full."""
    try:
        with open("/proc/net/netstat") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return None


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def pct_change(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a == 0:
        return None
    return b / a


# ---------------------------------------------------------------------------- processes


JWT_ISSUER = "https://idp.bench.example/"
JWT_AUDIENCE = "bench-app"


@dataclass
class BenchIdP:
    """An identity provider for the JWT credential (SPEC §10): an RS256 key generated per
    run, published to the relay as a `jwks_file` (no JWKS server in the measured path)."""

    private: Any
    kid: str
    issuers_file: Path

    @classmethod
    def create(cls, work: Path) -> BenchIdP:
        from cryptography.hazmat.primitives.asymmetric import rsa
        from jwt.algorithms import RSAAlgorithm

        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = dict(RSAAlgorithm.to_jwk(private.public_key(), as_dict=True))
        jwk.update(kid="bench-rs256", alg="RS256", use="sig")
        (work / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
        issuers = work / "issuers.toml"
        issuers.write_text(f'[[issuer]]\nissuer = "{JWT_ISSUER}"\naudience = "{JWT_AUDIENCE}"\n'
                           'jwks_file = "jwks.json"\n')  # fmt: skip
        return cls(private, "bench-rs256", issuers)

    def token(self, sub: str, ttl_s: int = 86400) -> str:
        import jwt

        now = int(time.time())
        claims = {"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": sub, "iat": now,
                  "exp": now + ttl_s}  # fmt: skip
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid})


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    _idp: BenchIdP | None = None

    def spawn(
        self,
        cmd: list[str],
        log_name: str,
        env: dict[str, str] | None = None,
        stdin: Any = subprocess.DEVNULL,
        cwd: Path | None = None,
    ) -> subprocess.Popen[Any]:
        out = open(self.work / log_name, "ab")
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=stdin,
            env=env,
            cwd=cwd or self.work,
        )
        out.close()
        self.procs.append(proc)
        return proc

    def stop(
        self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15
    ) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc, timeout=5)

    # --- mocks ---------------------------------------------------------------------
    def start_json_mock(self) -> tuple[int, str]:
        """nginx serving the static chat.completion; the Python mock when nginx is absent."""
        port = free_port()
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
        )
        if nginx and not self.args.python_mock:
            conf = self.work / "nginx.conf"
            tmp = self.work / "nginx-tmp"
            tmp.mkdir(exist_ok=True)
            conf.write_text(NGINX_CONF.format(port=port, work=self.work, tmp=tmp, body=STATIC_JSON))
            proc = self.spawn([nginx, "-c", str(conf), "-p", str(self.work)], "nginx.log")
            wait_port(port, proc)
            return port, "nginx"
        log("nginx not found: using the Python mock for JSON (install nginx for real numbers)")
        proc = self.spawn([PY, str(BENCH / "mock_sse.py"), "--port", str(port)], "mock-json.log")
        wait_port(port, proc)
        return port, "python-mock"

    def start_sse_mock(self) -> int:
        port = free_port()
        proc = self.spawn([PY, str(BENCH / "mock_sse.py"), "--port", str(port)], "mock-sse.log")
        wait_port(port, proc)
        return port

    # --- relay ---------------------------------------------------------------------
    def relay_env(
        self,
        upstream_port: int,
        database_url: str,
        redis_url: str | None,
        extra: dict[str, str] | None = None,
        src: Path = SRC,
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not _relay_setting(k)}
        env.update(
            PYTHONPATH=str(src),
            ENCRYPTION_SECRET=ENCRYPTION_SECRET,
            APP_SECRET=APP_SECRET,
            DATABASE_URL=database_url,
            PROVIDER_OPENAI_BASE_URL=f"http://127.0.0.1:{upstream_port}",
            RATE_LIMIT_GLOBAL=HUGE,
            RATE_LIMIT_RELAY=HUGE,
            RATE_LIMIT_REGISTER=HUGE,
            ALLOWED_MODELS="gpt-*,mock-*",
            ALLOWED_ORIGINS=ORIGIN,
            LOG_LEVEL="info",
            WORKERS="1",
        )
        env["JWT_ISSUERS_FILE"] = str(self.identity().issuers_file)
        if redis_url:
            env["REDIS_URL"] = redis_url
        env.update(extra or {})
        return env

    def identity(self) -> BenchIdP:
        if self._idp is None:
            self._idp = BenchIdP.create(self.work)
        return self._idp

    def start_relay(
        self,
        name: str,
        upstream_port: int,
        database_url: str,
        redis_url: str | None = None,
        extra: dict[str, str] | None = None,
        src: Path = SRC,
    ) -> tuple[subprocess.Popen[Any], int]:
        port = free_port()
        env = self.relay_env(upstream_port, database_url, redis_url, extra, src)
        cmd = [PY, "-m", "byok_relay", "serve", "--host", "127.0.0.1", "--port", str(port)]
        # stdout is the JSON access log (one line per request), kept in a file.
        proc = self.spawn(cmd, f"relay-{name}.log", env=env)
        try:
            wait_port(port, proc, timeout=30)
        except RuntimeError as exc:
            tail = (self.work / f"relay-{name}.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"relay {name} did not start: {exc}\n{tail}") from None
        return proc, port

    def migrate(self, database_url: str) -> None:
        env = self.relay_env(1, database_url, None)
        subprocess.run(
            [PY, "-m", "byok_relay", "migrate"],
            env=env,
            cwd=self.work,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def setup_user(self, relay_port: int) -> str:
        base = f"http://127.0.0.1:{relay_port}"
        status, body = http(
            "POST", f"{base}/users", {"app_id": "bench"}, {"authorization": f"Bearer {APP_SECRET}"}
        )
        if status != 200:
            raise RuntimeError(f"POST /users → {status} {body}")
        token = body["token"]
        status, body = http(
            "POST", f"{base}/keys/openai", {"key": PROVIDER_KEY}, {"x-relay-token": token}
        )
        if status != 200:
            raise RuntimeError(f"POST /keys/openai → {status} {body}")
        # One real request through the relay before any measurement.
        status, body = http(
            "POST",
            f"{base}{RELAY_CHAT}",
            json.loads(CHAT_BODY),
            {"x-relay-token": token, "origin": ORIGIN},
        )
        if status != 200:
            raise RuntimeError(f"relay request → {status} {body}")
        return token

    # --- wrk -----------------------------------------------------------------------
    def wrk(
        self,
        port: int,
        path: str,
        conns: int,
        duration: float,
        tokens: list[str] | None = None,
        threads: int | None = None,
    ) -> dict[str, Any]:
        script = self.work / f"wrk-{uuid.uuid4().hex[:8]}.lua"
        script.write_text(wrk_script(tokens or []))
        threads = threads or (1 if conns == 1 else 2)
        cmd = [
            "wrk",
            f"-t{threads}",
            f"-c{conns}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        script.unlink()
        for line in out.stdout.splitlines():
            if line.startswith("WRKJSON "):
                res: dict[str, Any] = json.loads(line[8:])
                res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
                res["errors"] = sum(v for k, v in res.items() if k.startswith("errors_"))
                return res
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")

    def measured_wrk(
        self,
        relay: subprocess.Popen[Any],
        port: int,
        path: str,
        conns: int,
        duration: float,
        tokens: list[str] | None = None,
    ) -> dict[str, Any]:
        """wrk against the relay, with the relay tree's CPU time before/after."""
        cpu0, th0 = cpu_seconds(relay.pid), thread_cpu(relay.pid)
        res = self.wrk(port, path, conns, duration, tokens)
        cpu1, th1 = cpu_seconds(relay.pid), thread_cpu(relay.pid)
        res["relay_cpu_s"] = round(cpu1 - cpu0, 3)
        # Which threads spent it (main = the event loop; others = aiosqlite, executors).
        res["relay_cpu_s_by_thread"] = {
            k: round(v - th0.get(k, 0.0), 3) for k, v in th1.items() if v - th0.get(k, 0.0) > 0
        }
        res["cpu_us_per_request"] = (
            (cpu1 - cpu0) * 1e6 / res["requests"] if res["requests"] else None
        )
        return res

    # --- SSE client ----------------------------------------------------------------
    def sse(self, port: int, path: str, n: int, token: str | None, events: int) -> dict[str, Any]:
        cmd = [
            PY,
            str(BENCH / "sse_client.py"),
            "stream",
            "--port",
            str(port),
            "--path",
            path,
            "-n",
            str(n),
            "--events",
            str(events),
        ]
        if token:
            cmd += ["--token", token]
        overflows = listen_overflows()
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"sse_client failed: {out.stderr[-1500:]}")
        res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        after = listen_overflows()
        # Accept-queue overflows during the run (a full listen backlog drops the SYN;
        # the client retries after 1 s, 3 s, 7 s ...): machine-wide counter.
        res["listen_overflows"] = (
            (after - overflows) if overflows is not None and after is not None else None
        )
        return res


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16000; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            add_header x-request-id req_bench;
            add_header openai-processing-ms 1;
            return 200 '{body}';
        }}
    }}
}}
"""


def wrk_script(tokens: list[str]) -> str:
    lua = [
        'wrk.method = "POST"',
        f"wrk.body = '{CHAT_BODY}'",
        'wrk.headers["Content-Type"] = "application/json"',
        f'wrk.headers["Origin"] = "{ORIGIN}"',
    ]
    if len(tokens) == 1:
        lua.append(f'wrk.headers["x-relay-token"] = "{tokens[0]}"')
    elif tokens:
        lua.append("local tokens = {" + ",".join(f'"{t}"' for t in tokens) + "}")
        lua.append("local n = #tokens")
        lua.append("local i = math.random(n)")
        lua.append(
            "request = function()\n  i = i % n + 1\n"
            '  wrk.headers["x-relay-token"] = tokens[i]\n  return wrk.format()\nend'
        )
    lua.append(
        "done = function(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        '  io.write(string.format(\'WRKJSON {"requests":%d,"duration_us":%d,'
        '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,'
        '"errors_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,'
        '"max_us":%d,"mean_us":%.1f}\\n\', summary.requests, summary.duration, e.connect,'
        " e.read, e.write, e.status, e.timeout, latency:percentile(50),"
        " latency:percentile(90), latency:percentile(99), latency:percentile(99.9),"
        " latency.max, latency.mean))\n"
        "end"
    )
    return "\n".join(lua) + "\n"


def _relay_setting(name: str) -> bool:
    """Variables of the caller's environment that would change the relay under test."""
    return name.startswith("PROVIDER_") or name in {
        "ENCRYPTION_SECRET",
        "ENCRYPTION_SECRET_PREVIOUS",
        "TOKEN_HMAC_SECRET",
        "APP_SECRET",
        "DATABASE_URL",
        "DB_PATH",
        "REDIS_URL",
        "RATE_LIMIT_GLOBAL",
        "RATE_LIMIT_RELAY",
        "RATE_LIMIT_REGISTER",
        "ALLOWED_MODELS",
        "ALLOWED_ORIGINS",
        "TRUSTED_PROXIES",
        "CACHE_TTL_S",
        "WORKERS",
        "HOST",
        "PORT",
        "LOG_LEVEL",
        "PROVIDERS_FILE",
    }


# ---------------------------------------------------------------------------- phases


def phase_json(b: Bench, json_port: int) -> None:
    a = b.args
    log("non-streaming JSON: starting relay")
    relay, port = b.start_relay("json", json_port, f"sqlite:///{b.work}/relay.db")
    try:
        token = b.setup_user(port)
        log("warm-up")
        b.wrk(port, RELAY_CHAT, 64, a.warmup, [token])
        b.wrk(json_port, DIRECT_CHAT, 64, 1, [token])
        log(f"64 connections, {a.duration}s each: direct, then relay")
        direct64 = b.wrk(json_port, DIRECT_CHAT, 64, a.duration, [token])
        relay64 = b.measured_wrk(relay, port, RELAY_CHAT, 64, a.duration, [token])
        log(f"1 connection, {a.duration}s each: direct, then relay")
        direct1 = b.wrk(json_port, DIRECT_CHAT, 1, a.duration, [token])
        relay1 = b.measured_wrk(relay, port, RELAY_CHAT, 1, a.duration, [token])
        spend = measure_spend_control(b, relay, port, token)
        jwt_runs = measure_jwt_credential(b, relay, port, token)
        time.sleep(1.5)  # let the usage recorder flush its batch
        rows = _count_rows(b.work / "relay.db", "request_log")
        log_lines = _count_lines(b.work / "relay-json.log")
        if a.profile:
            profile(b, relay, port, token)
    finally:
        b.stop(relay)
    floor = measure_floor(b, json_port, token)
    custody = measure_custody(b, json_port)
    workers = measure_workers(b, json_port)
    b.results["json"] = {
        "direct_c64": direct64,
        "relay_c64": relay64,
        "direct_c1": direct1,
        "relay_c1": relay1,
        "request_log_rows": rows,
        "access_log_lines": log_lines,
        "floor": floor,
        "spend": spend,
        "jwt": jwt_runs,
        "jwt_verify_us": measure_jwt_verify(b),
        "custody": custody,
        "workers": workers,
    }


def measure_spend_control(
    b: Bench, relay: subprocess.Popen[Any], port: int, token: str
) -> dict[str, list[dict[str, Any]]]:
    """The same load with every spend-control check in use (SPEC §9): a second user with
    an owner budget (window + per-provider caps) relaying through a scoped token bound to
    provider, models, origin, client address and a lifetime budget; against the plain
    user (no budget, relay token) on the same relay process."""
    scoped = every_feature_token(b, port)
    b.wrk(port, RELAY_CHAT, 64, b.args.warmup, [scoped])
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for i in range(2):  # interleaved, so drift within the run hits both sides alike
        log(f"spend control, round {i + 1}/2: plain user, then scoped token + budgets")
        runs["off"].append(b.measured_wrk(relay, port, RELAY_CHAT, 64, b.args.duration, [token]))
        runs["on"].append(b.measured_wrk(relay, port, RELAY_CHAT, 64, b.args.duration, [scoped]))
    return runs


def measure_workers(b: Bench, json_port: int) -> dict[str, dict[str, Any]]:
    """Throughput with `serve --workers 1` and `--workers 2` (SO_REUSEPORT), each on a
    fresh SQLite file: how far one more process takes the same machine."""
    out: dict[str, dict[str, Any]] = {}
    for n in (1, 2):
        relay, port = b.start_relay(
            f"workers{n}", json_port, f"sqlite:///{b.work}/workers{n}.db", extra={"WORKERS": str(n)}
        )
        try:
            token = b.setup_user(port)
            b.wrk(port, RELAY_CHAT, 64, b.args.warmup, [token])
            log(f"--workers {n}: 64 connections, {b.args.duration}s")
            out[str(n)] = b.measured_wrk(relay, port, RELAY_CHAT, 64, b.args.duration, [token])
        finally:
            b.stop(relay)
    return out


def every_feature_token(b: Bench, port: int) -> str:
    """A new user with an owner budget (window + per-provider caps) and a scoped token of
    theirs bound to provider, models, origin, client address and a lifetime budget: every
    admission check runs on each request it sends."""
    owner = b.setup_user(port)
    base = f"http://127.0.0.1:{port}"
    big = 10**12  # caps that are never reached: the checks run, nothing is refused
    status, body = http(
        "PUT", f"{base}/budget",
        {"window": "day", "requests": big, "tokens": big,
         "providers": {"openai": {"requests": big, "tokens": big}}},
        {"x-relay-token": owner},
    )  # fmt: skip
    if status != 200:
        raise RuntimeError(f"PUT /budget → {status} {body}")
    status, body = http(
        "POST", f"{base}/tokens",
        {"providers": ["openai"], "models": ["gpt-*"], "origins": [ORIGIN],
         "ips": ["127.0.0.0/8"], "ttl_s": 86400, "budget": {"requests": big, "tokens": big}},
        {"x-relay-token": owner},
    )  # fmt: skip
    if status != 201:
        raise RuntimeError(f"POST /tokens → {status} {body}")
    return str(body["token"])


def _per_request(res: dict[str, Any], which: Any) -> int:
    spent = sum(v for k, v in res["relay_cpu_s_by_thread"].items() if which(k))
    return round(spent * 1e6 / res["requests"]) if res["requests"] else 0


def phase_ab(b: Bench, json_port: int) -> None:
    """This checkout against `--against REF` (a commit, built as a git worktree in the work
    dir), each relay on its own SQLite file with every feature on, and the floor: rounds
    interleaved (the order alternates), so the VM's drift hits all three alike. Reports
    the median CPU µs/request at 64 connections and p50 latency at 1, per side."""
    a = b.args
    other = b.work / "against"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(other), a.against],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    sides: dict[str, tuple[subprocess.Popen[Any], int, str]] = {}
    try:
        for name, src in (("this", SRC), ("against", other / "src")):
            relay, port = b.start_relay(
                f"ab-{name}", json_port, f"sqlite:///{b.work}/ab-{name}.db", src=src
            )
            sides[name] = (relay, port, every_feature_token(b, port))
        floor, floor_port = start_floor(b, json_port, sides["this"][2], "ab-floor.log")
        sides["floor"] = (floor, floor_port, sides["this"][2])
        for _, port, token in sides.values():
            b.wrk(port, RELAY_CHAT, 64, a.warmup, [token])
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        order = list(sides)
        for i in range(a.ab_rounds):
            log(f"A/B round {i + 1}/{a.ab_rounds}: {', '.join(order)}")
            for name in order:
                relay, port, token = sides[name]
                c64 = b.measured_wrk(relay, port, RELAY_CHAT, 64, a.duration, [token])
                c1 = b.wrk(port, RELAY_CHAT, 1, max(2.0, a.duration / 2), [token])
                runs[name].append({"c64": c64, "c1": c1})
            # The mock itself at one connection: what "added latency" is added to.
            runs.setdefault("direct", []).append(
                {"c1": b.wrk(json_port, DIRECT_CHAT, 1, max(2.0, a.duration / 2))}
            )
            order.reverse()
        summary: dict[str, dict[str, Any]] = {
            "direct": {
                "p50_ms_c1": round(
                    statistics.median(r["c1"]["p50_us"] / 1000 for r in runs.pop("direct")), 3
                )
            }
        }
        for name, rs in runs.items():
            summary[name] = {
                "cpu_us_per_request": round(
                    statistics.median(r["c64"]["cpu_us_per_request"] for r in rs), 1
                ),
                "rps": round(statistics.median(r["c64"]["rps"] for r in rs)),
                "p50_ms_c1": round(statistics.median(r["c1"]["p50_us"] / 1000 for r in rs), 3),
                "errors": sum(r["c64"]["errors"] + r["c1"]["errors"] for r in rs),
            }
        b.results["ab"] = {"against": a.against, "rounds": runs, "median": summary}
    finally:
        for relay, _, _ in sides.values():
            b.stop(relay)
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)],
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip


def phase_soak(b: Bench, json_port: int) -> None:
    """Flat over time (issue: performance round two): the JSON load at 64 connections
    with every feature on, minute by minute, on one relay process and one SQLite file.
    Each minute is 50 s on the relay and 10 s on the bare floor relay (running alongside):
    the relay/floor CPU ratio is what drifts if the relay slows down as its request log
    grows, while the VM's own speed changes cancel out (they move both)."""
    minutes = b.args.soak_minutes
    db = b.work / "soak.db"
    relay, port = b.start_relay("soak", json_port, f"sqlite:///{db}")
    floor_port = free_port()
    per_minute: list[dict[str, Any]] = []
    try:
        scoped = every_feature_token(b, port)
        cmd = [PY, str(BENCH / "minimal_relay.py"), "--port", str(floor_port),
               "--upstream", f"http://127.0.0.1:{json_port}", "--token", scoped]  # fmt: skip
        floor = b.spawn(cmd, "minimal-relay-soak.log")
        wait_port(floor_port, floor)
        b.wrk(port, RELAY_CHAT, 64, b.args.warmup, [scoped])
        b.wrk(floor_port, RELAY_CHAT, 64, b.args.warmup, [scoped])
        for minute in range(1, minutes + 1):
            res = b.measured_wrk(relay, port, RELAY_CHAT, 64, 50, [scoped])
            ref = b.measured_wrk(floor, floor_port, RELAY_CHAT, 64, 10, [scoped])
            cpu, floor_cpu = res["cpu_us_per_request"] or 0, ref["cpu_us_per_request"] or 0
            row = {
                "minute": minute,
                "rps": round(res["rps"]),
                "errors": res["errors"],
                "cpu_us_per_request": round(cpu),
                "floor_cpu_us_per_request": round(floor_cpu),
                "vs_floor": round(cpu / floor_cpu, 3) if floor_cpu else None,
                # the event loop vs the other threads (aiosqlite's writer and reader):
                # whether a drift is the request log's inserts or the request path
                "loop_us_per_request": _per_request(res, lambda t: t == "main"),
                "threads_us_per_request": _per_request(res, lambda t: t != "main"),
                "rss_mb": round(rss_bytes(relay.pid) / 1e6, 1),
                "request_log_rows": _count_rows(db, "request_log"),
                "db_mb": round(sum(f.stat().st_size for f in b.work.glob("soak.db*")) / 1e6, 1),
            }
            per_minute.append(row)
            log("soak " + ", ".join(f"{k} {v}" for k, v in row.items()))
    finally:
        b.stop(relay)
    b.results["soak"] = {"minutes": per_minute}


def measure_jwt_credential(
    b: Bench, relay: subprocess.Popen[Any], port: int, token: str
) -> dict[str, list[dict[str, Any]]]:
    """The same load with a signed-in user's JWT as the credential (SPEC §10) instead of
    a relay token. The browser sends one token until it refreshes it, so this is the
    verified-token cache's path; measure_jwt_verify gives the cost of a first sight."""
    jwt_token = b.identity().token("bench-user")
    base = f"http://127.0.0.1:{port}"
    status, body = http("POST", f"{base}/keys/openai", {"key": PROVIDER_KEY},
                        {"authorization": f"Bearer {jwt_token}"})  # fmt: skip
    if status != 200:
        raise RuntimeError(f"POST /keys/openai with a JWT → {status} {body}")
    b.wrk(port, RELAY_CHAT, 64, b.args.warmup, [jwt_token])
    runs: dict[str, list[dict[str, Any]]] = {"relay_token": [], "jwt": []}
    for i in range(2):
        log(f"JWT credential, round {i + 1}/2: relay token, then JWT")
        runs["relay_token"].append(
            b.measured_wrk(relay, port, RELAY_CHAT, 64, b.args.duration, [token])
        )
        runs["jwt"].append(
            b.measured_wrk(relay, port, RELAY_CHAT, 64, b.args.duration, [jwt_token])
        )
    return runs


def measure_jwt_verify(b: Bench, n: int = 300) -> float:
    """CPU µs of one first-sight verification (RS256, PyJWT), in this process: each of `n`
    distinct tokens is verified once, as a new token is on the relay."""
    import asyncio

    sys.path.insert(0, str(SRC))
    from byok_relay.identity import IdentityVerifier, load_issuers

    issuers = load_issuers(b.identity().issuers_file, {}, allow_private=False)
    verifier = IdentityVerifier.build(issuers, lambda: None, 5.0)
    tokens = [b.identity().token(f"user-{i}") for i in range(n)]

    async def run() -> float:
        await verifier.verify(tokens[0])  # the key file is read once
        started = time.process_time()
        for t in tokens[1:]:
            await verifier.verify(t)
        return (time.process_time() - started) * 1e6 / (n - 1)

    return asyncio.run(run())


SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so",
                   "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")  # fmt: skip


def softhsm_env(b: Bench) -> dict[str, str] | None:
    """A throwaway SoftHSM2 token in the bench's work dir (fake PINs), or None without it."""
    module = next((m for m in SOFTHSM_MODULES if Path(m).is_file()), None)
    if module is None or shutil.which("softhsm2-util") is None:
        return None
    tokens = b.work / "softhsm" / "tokens"
    tokens.mkdir(parents=True)
    conf = b.work / "softhsm" / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    env = {"SOFTHSM2_CONF": str(conf), "KEY_CUSTODY": "pkcs11", "PKCS11_MODULE": module,
           "PKCS11_TOKEN_LABEL": "bench", "PKCS11_PIN": "bench-fake-1234"}  # fmt: skip
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench",
                    "--pin", env["PKCS11_PIN"], "--so-pin", "bench-fake-5678"],
                   env={**os.environ, **env}, check=True, capture_output=True)  # fmt: skip
    return env


def measure_custody(b: Bench, json_port: int) -> dict[str, list[dict[str, Any]]] | None:
    """CPU per request with the master key in an HSM (SoftHSM2, KEY_CUSTODY=pkcs11) and
    warm caches, against local custody: two fresh relays on their own databases, four
    interleaved rounds each (SPEC §11; target within 5 %)."""
    hsm = softhsm_env(b)
    if hsm is None:
        log("custody: SoftHSM2 not installed (Debian softhsm2); skipped")
        return None
    env = b.relay_env(json_port, f"sqlite:///{b.work}/custody-hsm.db", None, hsm)
    subprocess.run([PY, "-m", "byok_relay", "init", "--pkcs11", "--path",
                    str(b.work / "custody.env")], env=env, cwd=b.work, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    relays = {
        "local": b.start_relay("custody-local", json_port, f"sqlite:///{b.work}/custody-local.db"),
        "pkcs11": b.start_relay(
            "custody-hsm", json_port, f"sqlite:///{b.work}/custody-hsm.db", extra=hsm
        ),
    }
    runs: dict[str, list[dict[str, Any]]] = {"local": [], "pkcs11": []}
    try:
        tokens = {name: b.setup_user(port) for name, (_, port) in relays.items()}
        for name, (_, port) in relays.items():
            b.wrk(port, RELAY_CHAT, 64, b.args.warmup, [tokens[name]])
        for i in range(4):  # interleaved, each side first in every other round
            order = list(relays.items())[:: 1 if i % 2 == 0 else -1]
            log(f"key custody, round {i + 1}/4: {order[0][0]}, then {order[1][0]}")
            for name, (proc, port) in order:
                runs[name].append(
                    b.measured_wrk(proc, port, RELAY_CHAT, 64, b.args.duration, [tokens[name]])
                )
    finally:
        for proc, _ in relays.values():
            b.stop(proc)
    return runs


def start_floor(
    b: Bench, json_port: int, token: str, log_name: str
) -> tuple[subprocess.Popen[Any], int]:
    """bench/minimal_relay.py in front of the JSON mock, accepting `token`."""
    port = free_port()
    cmd = [PY, str(BENCH / "minimal_relay.py"), "--port", str(port),
           "--upstream", f"http://127.0.0.1:{json_port}", "--token", token]  # fmt: skip
    proc = b.spawn(cmd, log_name)
    wait_port(port, proc)
    return proc, port


def measure_floor(b: Bench, json_port: int, token: str) -> dict[str, Any] | None:
    """The same load on bench/minimal_relay.py: the aiohttp server+client floor, now."""
    try:
        proc, port = start_floor(b, json_port, token, "minimal-relay.log")
    except Exception as exc:
        log(f"floor did not start: {exc}")
        return None
    try:
        log("floor: minimal aiohttp relay, 64 connections then 1")
        b.wrk(port, RELAY_CHAT, 64, b.args.warmup, [token])
        c64 = b.measured_wrk(proc, port, RELAY_CHAT, 64, b.args.duration, [token])
        c1 = b.measured_wrk(proc, port, RELAY_CHAT, 1, b.args.duration, [token])
        return {"c64": c64, "c1": c1}
    except Exception as exc:
        log(f"floor measurement failed: {exc}")
        return None
    finally:
        b.stop(proc)


def profile(b: Bench, relay: subprocess.Popen[Any], port: int, token: str) -> None:
    pyspy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not os.path.exists(pyspy):
        log("--profile: py-spy not found (pip install py-spy); skipped")
        return
    stamp = b.results["stamp"]
    for fmt, ext in (("raw", "txt"), ("flamegraph", "svg")):
        out = RESULTS / f"{stamp}-profile.{ext}"
        log(f"profiling the relay under 64-connection load → {out.name}")
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "--pid",
                str(relay.pid),
                "--format",
                fmt,
                "--rate",
                "250",
                "--duration",
                str(max(3, round(b.args.duration))),
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)
        b.wrk(port, RELAY_CHAT, 64, max(3, b.args.duration) + 0.5, [token])
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            log(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
            return
        if fmt == "raw":
            b.results["profile_top"] = summarize_profile(out)


def summarize_profile(path: Path, top: int = 30) -> dict[str, Any]:
    """Self and inclusive share per function from py-spy's collapsed stacks."""
    self_c: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [
            f.split(" (", 1)[0] + " (" + f.split(" (", 1)[1].rsplit(":", 1)[0] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        self_c[frames[-1]] = self_c.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n

    def ranked(d: dict[str, int]) -> list[list[Any]]:
        return [
            [f, round(100 * c / total, 1)]
            for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:top]
        ]

    return {"samples": total, "self_pct": ranked(self_c), "inclusive_pct": ranked(incl)}


def phase_sse(b: Bench, sse_port: int, token_db: Path) -> None:
    a = b.args
    log(f"SSE: starting relay on the SSE mock (--workers {a.sse_workers})")
    extra = {"WORKERS": str(a.sse_workers)} if a.sse_workers > 1 else None
    relay, port = b.start_relay("sse", sse_port, f"sqlite:///{token_db}", extra=extra)
    q = f"?sse=1&n={a.events}&ms={a.interval_ms}"
    out: dict[str, Any] = {
        "events": a.events,
        "interval_ms": a.interval_ms,
        "workers": a.sse_workers,
    }
    floor: subprocess.Popen[Any] | None = None
    try:
        token = b.setup_user(port)
        # The floor relay streams too: what any one-process aiohttp relay costs here.
        floor, floor_port = start_floor(b, sse_port, token, "minimal-relay-sse.log")
        for n in a.streams:
            log(f"SSE: {n} concurrent streams x {a.rounds} round(s), direct, relay and floor")
            b.sse(sse_port, DIRECT_CHAT + q, n, None, a.events)  # warm-up, not recorded
            b.sse(port, RELAY_CHAT + q, n, token, a.events)
            b.sse(floor_port, RELAY_CHAT + q, n, token, a.events)
            rounds = []
            for _ in range(a.rounds):
                time.sleep(0.5)
                d = b.sse(sse_port, DIRECT_CHAT + q, n, None, a.events)
                time.sleep(0.5)
                cpu0 = cpu_seconds(relay.pid)
                r = b.sse(port, RELAY_CHAT + q, n, token, a.events)
                r["relay_cpu_s"] = round(cpu_seconds(relay.pid) - cpu0, 3)
                time.sleep(0.5)
                f = b.sse(floor_port, RELAY_CHAT + q, n, token, a.events)
                rounds.append({"direct": d, "relay": r, "floor": f})
            out[str(n)] = {"rounds": rounds, "median": _sse_median(rounds)}
    finally:
        b.stop(relay)
        if floor is not None:
            b.stop(floor)
    b.results["sse"] = out


def _sse_median(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(side: str, *path: str) -> float | None:
        vals = []
        for r in rounds:
            v: Any = r[side]
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            if v is not None:
                vals.append(v)
        return statistics.median(vals) if vals else None

    m: dict[str, Any] = {}
    for side in ("direct", "relay", "floor"):
        m[side] = {
            "worst_lateness_ms": med(side, "lateness", "max_ms"),
            "p99_lateness_ms": med(side, "lateness", "p99_ms"),
            "ttfb_p50_ms": med(side, "ttfb", "p50_ms"),
            "ttfb_max_ms": med(side, "ttfb", "max_ms"),
            "events": med(side, "events"),
            "events_expected": med(side, "events_expected"),
            "multi_event_reads": med(side, "multi_event_reads"),
            "reads_with_events": med(side, "reads_with_events"),
            "completed": med(side, "completed"),
            "listen_overflows": med(side, "listen_overflows"),
        }
    return m


def phase_idle(b: Bench, sse_port: int, token_db: Path, fd_hard: int) -> None:
    a = b.args
    log("idle streams: starting relay on the SSE mock")
    relay, port = b.start_relay("idle", sse_port, f"sqlite:///{token_db}")
    # Each relayed stream holds two sockets in the relay (client side + upstream side).
    max_streams = (fd_hard - 200) // 2
    out: dict[str, Any] = {"fd_hard_limit": fd_hard, "max_streams_by_fd_limit": max_streams}
    try:
        token = b.setup_user(port)
        time.sleep(0.5)
        out["rss_baseline_bytes"] = rss_bytes(relay.pid)
        for target in a.idle:
            n = min(target, max_streams)
            log(f"idle: opening {n} streams through the relay (target {target})")
            per_proc = 4000
            k = max(1, -(-n // per_proc))
            clients = []
            for i in range(k):
                share = n // k + (1 if i < n % k else 0)
                cmd = [
                    PY,
                    str(BENCH / "sse_client.py"),
                    "idle",
                    "--port",
                    str(port),
                    "--path",
                    RELAY_CHAT + "?idle=1",
                    "--token",
                    token,
                    "-n",
                    str(share),
                    "--timeout",
                    "120",
                    "--connect-concurrency",
                    "100",
                ]
                clients.append(
                    subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                )
            ready = []
            for c in clients:
                assert c.stdout is not None
                line = c.stdout.readline()
                ready.append(
                    json.loads(line.split(" ", 1)[1])
                    if line.startswith("READY")
                    else {"ok": 0, "error": line}
                )
            time.sleep(2.0)
            rss = rss_bytes(relay.pid)
            fds = open_fds(relay.pid)
            for c in clients:
                assert c.stdin is not None
                with contextlib.suppress(BrokenPipeError):
                    c.stdin.write("\n")
                    c.stdin.close()
            for c in clients:
                assert c.stdout is not None
                c.stdout.read()
                c.wait(timeout=60)
            ok = sum(r.get("ok", 0) for r in ready)
            per_stream = (rss - out["rss_baseline_bytes"]) / ok if ok else None
            out[str(target)] = {
                "requested": target,
                "attempted": n,
                "open": ok,
                "relay_rss_bytes": rss,
                "relay_open_fds": fds,
                "rss_per_stream_bytes": per_stream,
                "rss_extrapolated_to_target_bytes": (
                    out["rss_baseline_bytes"] + per_stream * target if per_stream else None
                ),
                "clients": ready,
            }
            log(f"idle: {ok} open, relay RSS {rss / 2**20:.0f} MiB, {fds} fds")
            time.sleep(3.0)
    finally:
        b.stop(relay)
    b.results["idle"] = out


def seed_users(db: Path, users: int, active: int) -> list[str]:
    """Bulk-insert `users` users (one token and one OpenAI key each) into a migrated
    SQLite file. The first `active` get real tokens and decryptable keys; the others get
    random token hashes and random ciphertexts (never used). Returns the active tokens."""
    sys.path.insert(0, str(SRC))
    from byok_relay.crypto import KeyCipher, TokenHasher, key_hint, new_token

    hasher, cipher = TokenHasher(ENCRYPTION_SECRET), KeyCipher(ENCRYPTION_SECRET)
    now = int(time.time() * 1000)
    expires = now + 90 * 86_400_000
    tokens: list[str] = []
    u_rows, t_rows, k_rows = [], [], []
    # Random bytes in bulk: one getrandom call per row would dominate the seeding time.
    noise = os.urandom(88 * users)
    for i in range(users):
        base = 88 * i
        uid = noise[base : base + 16].hex()
        if i < active:
            token = new_token()
            tokens.append(token)
            thash = hasher.hash(token)
            sealed = cipher.seal(PROVIDER_KEY, uid, "openai")
            version, blob = sealed.version, sealed.blob
        else:
            thash = noise[base + 16 : base + 48].hex()
            version, blob = cipher.current_version, noise[base + 48 : base + 88]
        u_rows.append((uid, "bench", now))
        t_rows.append((thash, uid, now, expires))
        k_rows.append((uid, "openai", version, blob, key_hint(PROVIDER_KEY), now, now))
    # Rows in primary-key order, secondary indexes dropped during the load and re-created
    # from their own stored SQL afterwards: the schema ends up exactly as migrated.
    u_rows.sort()
    t_rows.sort()
    k_rows.sort()
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode = OFF")  # bulk load; WAL again below
    con.execute("PRAGMA synchronous = OFF")
    con.execute("PRAGMA cache_size = -1000000")
    indexes = con.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        " AND tbl_name IN ('users', 'tokens', 'api_keys')"
    ).fetchall()
    con.execute("BEGIN")
    for name, _ in indexes:
        con.execute(f'DROP INDEX "{name}"')
    con.executemany("INSERT INTO users (id, app_id, created_at) VALUES (?, ?, ?)", u_rows)
    con.executemany(
        "INSERT INTO tokens (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        t_rows,
    )
    con.executemany(
        "INSERT INTO api_keys (user_id, provider, key_version, ciphertext, hint,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        k_rows,
    )
    for _, sql in indexes:
        con.execute(sql)
    con.execute("COMMIT")
    con.execute("ANALYZE")
    con.execute("PRAGMA journal_mode = WAL")
    con.close()
    return tokens


def phase_db(b: Bench, json_port: int) -> None:
    a = b.args
    out: dict[str, Any] = {"active_tokens": a.active_tokens}
    for users in a.db_users:
        db = b.work / f"users-{users}.db"
        url = f"sqlite:///{db}"
        log(f"database size: seeding {users:,} users")
        t0 = time.monotonic()
        b.migrate(url)
        tokens = seed_users(db, users, a.active_tokens)
        seed_s = time.monotonic() - t0
        relay, port = b.start_relay(f"db{users}", json_port, url)
        try:
            b.wrk(port, RELAY_CHAT, 64, a.warmup, tokens)
            log(f"database size: {users:,} users, {len(tokens)} tokens in rotation")
            res = b.measured_wrk(relay, port, RELAY_CHAT, 64, a.duration, tokens)
        finally:
            b.stop(relay)
        res["seed_s"] = round(seed_s, 1)
        res["db_bytes"] = db.stat().st_size
        out[str(users)] = res
        with contextlib.suppress(OSError):
            for p in b.work.glob(f"users-{users}.db*"):
                p.unlink()
    b.results["db"] = out


def phase_postgres(b: Bench, json_port: int) -> None:
    a = b.args
    dbname = f"byok_bench_{b.results['stamp'].replace('-', '_').lower()}"
    pg = a.pg_url.rstrip("/")
    out: dict[str, Any] = {"database": dbname, "redis_url": a.redis_url}
    b.results["postgres"] = out
    try:
        _pg_admin(pg, f'CREATE DATABASE "{dbname}"')
    except Exception as exc:
        out["error"] = f"cannot create database: {exc}"
        log(f"postgres: {out['error']}")
        return
    try:
        log("postgres+redis: starting relay")
        relay, port = b.start_relay("pg", json_port, f"{pg}/{dbname}", a.redis_url)
        try:
            token = b.setup_user(port)
            b.wrk(port, RELAY_CHAT, 64, a.warmup, [token])
            out["direct_c64"] = b.wrk(json_port, DIRECT_CHAT, 64, a.duration, [token])
            out["relay_c64"] = b.measured_wrk(relay, port, RELAY_CHAT, 64, a.duration, [token])
            out["direct_c1"] = b.wrk(json_port, DIRECT_CHAT, 1, a.duration, [token])
            out["relay_c1"] = b.measured_wrk(relay, port, RELAY_CHAT, 1, a.duration, [token])
        finally:
            b.stop(relay)
    except Exception as exc:
        out["error"] = str(exc)[-2000:]
        log(f"postgres: {out['error'][:600]}")
    finally:
        with contextlib.suppress(Exception):
            _pg_admin(pg, f'DROP DATABASE IF EXISTS "{dbname}"')


def _pg_admin(pg_url: str, sql: str) -> None:
    psql = shutil.which("psql")
    if psql:
        subprocess.run(
            [psql, f"{pg_url}/postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return
    import asyncio

    import asyncpg  # type: ignore[import-not-found]

    async def run() -> None:
        conn = await asyncpg.connect(f"{pg_url}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def _count_rows(db: Path, table: str) -> int | None:
    try:
        con = sqlite3.connect(db)
        try:
            return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return None


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


# ---------------------------------------------------------------------------- report


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(metric: str, direct: Any, relay: Any, vs: Any, target: str, ok: bool | None) -> None:
        rows.append(
            {
                "metric": metric,
                "direct": direct,
                "relay": relay,
                "vs_direct": vs,
                "target": target,
                "met": ok,
            }
        )

    j = r.get("json")
    if j:
        d64, r64, d1, r1 = j["direct_c64"], j["relay_c64"], j["direct_c1"], j["relay_c1"]
        add(
            "JSON req/s @64 conns",
            round(d64["rps"]),
            round(r64["rps"]),
            f"{r64['rps'] / d64['rps']:.2f}x",
            "-",
            None,
        )
        cpu = r64["cpu_us_per_request"]
        add("relay CPU µs/request @64", "-", round(cpu), "-", "<= 200", cpu <= 200)
        fl = j.get("floor")
        if fl:
            f64 = fl["c64"]
            add("floor (bare aiohttp relay) CPU µs/req @64", "-",
                round(f64["cpu_us_per_request"]),
                f"relay = floor + {cpu - f64['cpu_us_per_request']:.0f} µs", "-", None)  # fmt: skip
            add("floor req/s @64", round(d64["rps"]), round(f64["rps"]),
                f"{f64['rps'] / d64['rps']:.2f}x", "-", None)  # fmt: skip
            f1 = fl["c1"]
            add("floor latency p50/p99 @1 (ms)", "-",
                f"{f1['p50_us'] / 1000:.3f} / {f1['p99_us'] / 1000:.3f}",
                f"+{(f1['p50_us'] - d1['p50_us']) / 1000:.3f} / "
                f"+{(f1['p99_us'] - d1['p99_us']) / 1000:.3f} ms", "-", None)  # fmt: skip
        for p, lim in (("p50", 0.3), ("p99", 1.0)):
            dd, rr = d1[f"{p}_us"] / 1000, r1[f"{p}_us"] / 1000
            add(
                f"latency {p} @1 conn (ms)",
                round(dd, 3),
                round(rr, 3),
                f"+{rr - dd:.3f} ms",
                f"added <= {lim} ms",
                rr - dd <= lim,
            )
        sp = j.get("spend")
        if sp:
            off, on = (statistics.mean(r["cpu_us_per_request"] for r in sp[k]) for k in sp)
            add("spend control: CPU µs/req @64, off → on", "-", f"{off:.0f} → {on:.0f}",
                f"{(on / off - 1) * 100:+.1f} %", "<= +10 %", on <= off * 1.10)  # fmt: skip
            errs_sp = sum(x["errors"] for k in ("off", "on") for x in sp[k])
            add("spend control: non-2xx/socket errors", "-", errs_sp, "-", "0", errs_sp == 0)
        jw = j.get("jwt")
        if jw:
            rt, jt = (statistics.mean(r["cpu_us_per_request"] for r in jw[k]) for k in jw)
            add("JWT credential: CPU µs/req @64, relay token → JWT", "-", f"{rt:.0f} → {jt:.0f}",
                f"{(jt / rt - 1) * 100:+.1f} %", "<= +10 %", jt <= rt * 1.10)  # fmt: skip
            errs_jw = sum(x["errors"] for k in jw for x in jw[k])
            add("JWT credential: non-2xx/socket errors", "-", errs_jw, "-", "0", errs_jw == 0)
        cu = j.get("custody")
        if cu:
            lo, hs = (statistics.mean(r["cpu_us_per_request"] for r in cu[k]) for k in cu)
            add("HSM custody (warm cache): CPU µs/req @64, local → pkcs11", "-",
                f"{lo:.0f} → {hs:.0f}", f"{(hs / lo - 1) * 100:+.1f} %", "<= +5 %",
                hs <= lo * 1.05)  # fmt: skip
            errs_cu = sum(x["errors"] for k in cu for x in cu[k])
            add("HSM custody: non-2xx/socket errors", "-", errs_cu, "-", "0", errs_cu == 0)
        if j.get("jwt_verify_us"):
            add("JWT first sight: RS256 verify CPU µs", "-", round(j["jwt_verify_us"]), "-",
                "-", None)  # fmt: skip
        errs = r64["errors"] + r1["errors"]
        add("relay non-2xx/socket errors", d64["errors"] + d1["errors"], errs, "-", "0", errs == 0)
        add(
            "request_log rows / access-log lines",
            "-",
            f"{j['request_log_rows']} / {j['access_log_lines']}",
            "-",
            "> 0",
            bool(j["request_log_rows"]) and j["access_log_lines"] > 0,
        )
    s = r.get("sse")
    if s:
        if s.get("workers", 1) > 1:
            add("SSE relay: serve --workers", "-", s["workers"], "-", "-", None)
        for n in (k for k in s if k.isdigit()):
            m = s[n]["median"]
            d, x = m["direct"], m["relay"]
            if d["worst_lateness_ms"] is None or x["worst_lateness_ms"] is None:
                add(f"SSE {n} streams", "-", "no data", "-", "-", False)
                continue
            dl, rl = d["worst_lateness_ms"], x["worst_lateness_ms"]
            if int(n) <= 200:
                add(
                    f"SSE {n}: worst event lateness (ms)",
                    round(dl, 1),
                    round(rl, 1),
                    f"+{rl - dl:.1f} ms",
                    "<= direct + 10 ms",
                    rl <= dl + 10,
                )
            else:
                add(
                    f"SSE {n}: worst event lateness (ms)",
                    round(dl, 1),
                    round(rl, 1),
                    f"{rl / dl:.2f}x",
                    "<= 2x direct",
                    rl <= 2 * dl,
                )
            add(
                f"SSE {n}: p99 event lateness (ms)",
                round(d["p99_lateness_ms"], 1),
                round(x["p99_lateness_ms"], 1),
                f"+{x['p99_lateness_ms'] - d['p99_lateness_ms']:.1f} ms",
                "-",
                None,
            )
            f = m.get("floor") or {}
            if f.get("worst_lateness_ms") is not None:
                fl, ft = f["worst_lateness_ms"], f["ttfb_max_ms"]
                add(
                    f"SSE {n}: floor relay worst lateness / TTFB max (ms)",
                    "-",
                    f"{fl:.1f} / {ft:.1f}",
                    f"+{fl - dl:.1f} / +{ft - d['ttfb_max_ms']:.1f} ms",
                    "-",
                    None,
                )
            added_max = x["ttfb_max_ms"] - d["ttfb_max_ms"]
            add(
                f"SSE {n}: TTFB max (ms)",
                round(d["ttfb_max_ms"], 1),
                round(x["ttfb_max_ms"], 1),
                f"+{added_max:.1f} ms",
                "added <= 60 ms" if int(n) <= 200 else "-",
                added_max <= 60 if int(n) <= 200 else None,
            )
            add(
                f"SSE {n}: TTFB p50 (ms)",
                round(d["ttfb_p50_ms"], 1),
                round(x["ttfb_p50_ms"], 1),
                f"+{x['ttfb_p50_ms'] - d['ttfb_p50_ms']:.1f} ms",
                "-",
                None,
            )
            add(
                f"SSE {n}: accept-queue overflows",
                d["listen_overflows"],
                x["listen_overflows"],
                "-",
                "0",
                (x["listen_overflows"] or 0) == 0,
            )
            delivered = x["events"] == x["events_expected"]
            add(
                f"SSE {n}: events delivered / multi-event reads",
                f"{int(d['events'])} / {int(d['multi_event_reads'])}",
                f"{int(x['events'])} / {int(x['multi_event_reads'])}",
                f"of {int(x['events_expected'])}",
                "all, one by one",
                delivered
                and x["multi_event_reads"]
                <= max(d["multi_event_reads"] * 1.5, 0.01 * x["events_expected"]),
            )
    i = r.get("idle")
    if i:
        for n in (k for k in i if k.isdigit()):
            e = i[n]
            rss = e["relay_rss_bytes"] / 2**20
            label = f"idle streams: RSS with {e['open']:,} open (MiB)"
            ext = e["rss_extrapolated_to_target_bytes"]
            vs = (
                f"{e['rss_per_stream_bytes'] / 1024:.1f} KiB/stream"
                if e["rss_per_stream_bytes"]
                else "-"
            )
            if e["open"] < e["requested"] and ext:
                vs += f"; at {e['requested']:,}: {ext / 2**20:.0f} MiB (extrapolated)"
            tgt = "<= 1024 MiB" if int(n) >= 10000 else "-"
            ok = (max(rss, (ext or 0) / 2**20) <= 1024) if int(n) >= 10000 else None
            add(label, "-", round(rss), vs, tgt, ok)
    d = r.get("db")
    if d:
        sizes = sorted(int(k) for k in d if k.isdigit())
        if len(sizes) >= 2:
            small, big = d[str(sizes[0])], d[str(sizes[-1])]
            ratio = big["cpu_us_per_request"] / small["cpu_us_per_request"]
            add(
                f"CPU µs/req: {sizes[0]:,} vs {sizes[-1]:,} users",
                round(small["cpu_us_per_request"]),
                round(big["cpu_us_per_request"]),
                f"{ratio:.2f}x",
                "<= 1.10x",
                ratio <= 1.10,
            )
            add(
                f"req/s @64: {sizes[0]:,} vs {sizes[-1]:,} users",
                round(small["rps"]),
                round(big["rps"]),
                f"{big['rps'] / small['rps']:.2f}x",
                "-",
                None,
            )
    p = r.get("postgres")
    if p:
        if "error" in p:
            add("PostgreSQL + Redis", "-", "not run", p["error"].splitlines()[0][:60], "-", None)
        elif "relay_c64" in p:
            d64, r64, d1, r1 = p["direct_c64"], p["relay_c64"], p["direct_c1"], p["relay_c1"]
            add(
                "PG+Redis: req/s @64",
                round(d64["rps"]),
                round(r64["rps"]),
                f"{r64['rps'] / d64['rps']:.2f}x",
                "-",
                None,
            )
            cpu = r64["cpu_us_per_request"]
            add("PG+Redis: relay CPU µs/request", "-", round(cpu), "-", "<= 200", cpu <= 200)
            for q, lim in (("p50", 0.3), ("p99", 1.0)):
                dd, rr = d1[f"{q}_us"] / 1000, r1[f"{q}_us"] / 1000
                add(
                    f"PG+Redis: latency {q} @1 (ms)",
                    round(dd, 3),
                    round(rr, 3),
                    f"+{rr - dd:.3f} ms",
                    f"added <= {lim} ms",
                    rr - dd <= lim,
                )
    wk = (r.get("json") or {}).get("workers")
    if wk and "1" in wk and "2" in wk:
        one, two = wk["1"]["rps"], wk["2"]["rps"]
        add("req/s @64, --workers 1 → 2", "-", f"{round(one)} → {round(two)}",
            f"{two / one:.2f}x", "-", None)  # fmt: skip
    soak = r.get("soak")
    if soak and len(soak["minutes"]) >= 2:
        first, last = soak["minutes"][0], soak["minutes"][-1]
        add(f"soak: req/s minute 1 → {last['minute']} (every feature on)", first["rps"],
            last["rps"], f"{(last['rps'] / first['rps'] - 1) * 100:+.1f} %", "-", None)  # fmt: skip
        ratios = [m["vs_floor"] for m in soak["minutes"] if m["vs_floor"]]
        if len(ratios) >= 2:
            # first half against second half: one noisy minute does not decide it
            half = len(ratios) // 2
            early, late = statistics.mean(ratios[:half]), statistics.mean(ratios[-half:])
            drift = late / early - 1
            ok = abs(drift) <= 0.05
            add("soak: relay/floor CPU ratio, first → second half", round(early, 2),
                round(late, 2), f"{drift * 100:+.1f} %", "within 5 %", ok)  # fmt: skip
        add("soak: relay RSS MB, first → last minute", first["rss_mb"], last["rss_mb"],
            f"{last['rss_mb'] - first['rss_mb']:+.1f} MB", "-", None)  # fmt: skip
        add("soak: request log rows at the end", "-", last["request_log_rows"],
            f"{last['db_mb']} MB on disk", "-", None)  # fmt: skip
    ab = r.get("ab")
    if ab:
        m = ab["median"]
        this, other, floor = m["this"], m["against"], m["floor"]
        fcpu = floor["cpu_us_per_request"]
        add(f"A/B CPU µs/req @64 (every feature), {ab['against']} → this", "-",
            f"{other['cpu_us_per_request']} → {this['cpu_us_per_request']}",
            f"{(this['cpu_us_per_request'] / other['cpu_us_per_request'] - 1) * 100:+.1f} %",
            "-", None)  # fmt: skip
        add("A/B relay / floor CPU, against → this", fcpu,
            f"{other['cpu_us_per_request'] / fcpu:.2f} → {this['cpu_us_per_request'] / fcpu:.2f}",
            f"floor + {this['cpu_us_per_request'] - fcpu:.0f} µs", "<= 1.5x",
            this["cpu_us_per_request"] <= 1.5 * fcpu)  # fmt: skip
        direct = m["direct"]["p50_ms_c1"]
        added = this["p50_ms_c1"] - direct
        add("A/B p50 @1 (ms), against → this", direct,
            f"{other['p50_ms_c1']} → {this['p50_ms_c1']}",
            f"+{added:.3f} ms (floor +{floor['p50_ms_c1'] - direct:.3f})", "added <= 0.3 ms",
            added <= 0.3)  # fmt: skip
        add("A/B req/s @64, against → this (floor)", floor["rps"],
            f"{other['rps']} → {this['rps']}", "-", "-", None)  # fmt: skip
        add("A/B non-2xx/socket errors", "-", this["errors"] + other["errors"], "-", "0",
            this["errors"] + other["errors"] == 0)  # fmt: skip
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ["metric", "direct", "relay", "relay vs direct", "target", "met"]
    cells = [
        [
            str(r["metric"]),
            str(r["direct"]),
            str(r["relay"]),
            str(r["vs_direct"]),
            str(r["target"]),
            {True: "yes", False: "NO", None: ""}[r["met"]],
        ]
        for r in rows
    ]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(head)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)) + " |")


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="byok-relay benchmark (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="short run: 3 s per wrk, 1 SSE round")
    p.add_argument(
        "--only",
        default="json,sse,idle,db,pg",
        help="comma list of phases: json,sse,idle,db,pg,soak,ab (soak and ab are not in "
        "the default)",
    )
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 10; quick 3)")
    p.add_argument("--warmup", type=float, help="warm-up seconds (default 3; quick 1)")
    p.add_argument("--rounds", type=int, help="SSE rounds, median reported (default 3; quick 1)")
    p.add_argument("--streams", default="200,1000", help="SSE concurrencies")
    p.add_argument(
        "--sse-workers", type=int, default=1, help="serve --workers for the SSE relay (default 1)"
    )
    p.add_argument("--events", type=int, default=30, help="SSE events per stream")
    p.add_argument("--interval-ms", type=int, default=20, help="ms between SSE events")
    p.add_argument("--idle", default="2000,10000", help="idle open-stream counts")
    p.add_argument(
        "--db-users", help="user-table sizes to compare (default 1000,1000000; quick 1000,200000)"
    )
    p.add_argument(
        "--active-tokens",
        type=int,
        default=100,
        help="distinct tokens wrk rotates through in the database-size phase",
    )
    p.add_argument(
        "--postgres",
        action="store_true",
        help="require the PostgreSQL+Redis phase (default: run it when reachable)",
    )
    p.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL+Redis")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also py-spy the relay under JSON load (after the measurements)",
    )
    p.add_argument(
        "--soak-minutes",
        type=int,
        help="minutes of the soak phase (default 10; quick 3); the phase runs when --only names it",
    )
    p.add_argument(
        "--against",
        default="HEAD",
        help="the commit the ab phase compares this checkout with (default HEAD: the "
        "working tree's uncommitted changes against their base)",
    )
    p.add_argument("--ab-rounds", type=int, default=5, help="interleaved rounds of the ab phase")
    p.add_argument("--python-mock", action="store_true", help="use the Python JSON mock, not nginx")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, DBs)")
    a = p.parse_args(argv)
    a.duration = a.duration or (3.0 if a.quick else 10.0)
    a.warmup = a.warmup or (1.0 if a.quick else 3.0)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.soak_minutes = a.soak_minutes or (3 if a.quick else 10)
    a.streams = [int(x) for x in a.streams.split(",") if x]
    a.idle = [int(x) for x in a.idle.split(",") if x]
    a.db_users = [
        int(x)
        for x in (a.db_users or ("1000,200000" if a.quick else "1000,1000000")).split(",")
        if x
    ]
    a.only = {x.strip() for x in a.only.split(",") if x.strip()}
    return a


def ensure_tools() -> None:
    missing = [
        t for t in ("wrk", "nginx") if not (shutil.which(t) or os.path.exists(f"/usr/sbin/{t}"))
    ]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing {' '.join(missing)} with apt-get (running as root)")
        subprocess.run(
            ["apt-get", "install", "-y", *missing], check=False, stdout=subprocess.DEVNULL
        )
        if not all(shutil.which(t) or os.path.exists(f"/usr/sbin/{t}") for t in missing):
            subprocess.run(["apt-get", "update"], check=False, stdout=subprocess.DEVNULL)
            subprocess.run(
                ["apt-get", "install", "-y", *missing], check=False, stdout=subprocess.DEVNULL
            )
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is required (Debian: apt-get install wrk)")


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "src"], capture_output=True, text=True
        ).stdout.strip()
    )
    versions = {}
    for mod in ("aiohttp", "uvloop", "limits", "aiosqlite", "orjson"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[mod] = version(mod)
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit,
        "src_dirty": dirty,
        "packages": versions,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_tools()
    fd_hard = raise_nofile()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"byok-bench-{stamp}-"))
    b = Bench(args, work)
    b.results.update(
        stamp=stamp,
        quick=args.quick,
        machine=machine(),
        work_dir=str(work),
        settings={k: v for k, v in vars(args).items() if k != "only"},
    )
    b.results["settings"]["only"] = sorted(args.only)
    log(f"work dir {work}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        json_port, json_mock = b.start_json_mock()
        b.results["json_mock"] = json_mock
        sse_port = b.start_sse_mock()
        token_db = work / "relay.db"
        load = b.results["loadavg_at_phase_start"] = {}
        if "json" in args.only:
            load["json"] = os.getloadavg()
            phase_json(b, json_port)
        if "sse" in args.only:
            load["sse"] = os.getloadavg()
            phase_sse(b, sse_port, token_db)
        if "idle" in args.only:
            load["idle"] = os.getloadavg()
            phase_idle(b, sse_port, token_db, fd_hard)
        if "db" in args.only:
            load["db"] = os.getloadavg()
            phase_db(b, json_port)
        if "soak" in args.only:
            load["soak"] = os.getloadavg()
            phase_soak(b, json_port)
        if "ab" in args.only:
            load["ab"] = os.getloadavg()
            phase_ab(b, json_port)
        want_pg = args.postgres or (not args.no_postgres and reachable(5432) and reachable(6379))
        if "pg" in args.only and want_pg:
            load["pg"] = os.getloadavg()
            phase_postgres(b, json_port)
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        b.stop_all()
        b.results["table"] = rows = targets(b.results)
        out = RESULTS / f"{stamp}.json"
        out.write_text(json.dumps(b.results, indent=1, default=str) + "\n")
        print()
        print(
            f"byok-relay bench {stamp} ({'quick' if args.quick else 'full'}; "
            f"JSON mock: {b.results.get('json_mock')}; {os.cpu_count()} CPUs)"
        )
        print_table(rows)
        print(f"\nresults: {out.relative_to(REPO)}")
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
