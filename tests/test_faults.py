"""Faults against real services, on private instances (the machine's PostgreSQL and Redis
are never stopped): a throwaway PostgreSQL cluster and redis-server on free ports.

- PostgreSQL stopped → 503 JSON on routes that need it, the process stays up, and it
  recovers by itself when PostgreSQL is back (recovery time printed).
- Redis stopped → rate limits fall back to per-process counting with a warning; traffic
  continues; shared counting and the invalidation bus resume when Redis is back.
- SIGTERM during open streams → no new connections, open streams finish (up to
  SHUTDOWN_GRACE_S), exit 0.
- `serve --workers 2` → two processes answer on one port.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from backends import PrivatePostgres, PrivateRedis, redis_keys
from providers.mock import SLOW_EVENTS, MockProviders
from providers.relay import CHAT, FAKE_KEY, Relay, StartRelay, User, register_user

CHAT_PATH = "/relay/openai/v1/chat/completions"


def _until(check: Callable[[], bool], limit: float, what: str) -> float:
    started = time.perf_counter()
    while not check():
        assert time.perf_counter() - started < limit, f"{what}: not within {limit} s"
        time.sleep(0.02)
    return time.perf_counter() - started


def _json_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str), body
    return str(body["error"])


def _log_lines(relay: Relay) -> list[dict[str, object]]:
    out = []
    for line in relay.log_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


# --- PostgreSQL down -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres().init()
    pg.start()
    yield pg
    pg.destroy()


@pytest.mark.postgres
def test_postgres_down_503_then_recovers_by_itself(
    private_pg: PrivatePostgres, start_relay: StartRelay
) -> None:
    relay = start_relay(DATABASE_URL=private_pg.url, DB_POOL_SIZE="3", CACHE_TTL_S="0")
    user = register_user(relay)
    user.store_key("openai", FAKE_KEY)
    with relay.client(timeout=20) as client:
        assert client.post(CHAT_PATH, json=CHAT, headers=user.headers).status_code == 200

        private_pg.stop()
        stopped_at = time.perf_counter()
        try:
            # Every route that needs the database: 503 JSON, quickly, no stack trace.
            for method, path, body in (
                ("POST", "/users", {"app_id": "during-outage"}),
                ("GET", "/keys", None),
                ("POST", "/keys/openai", {"key": FAKE_KEY}),
                ("POST", CHAT_PATH, CHAT),
                ("GET", "/stats", None),
            ):
                started = time.perf_counter()
                r = client.request(method, path, json=body, headers=user.headers)
                message = _json_error(r, 503)
                assert "database" in message.lower()
                assert "Traceback" not in r.text and "asyncpg" not in r.text
                assert time.perf_counter() - started < 12  # bounded, never wedged
            # Liveness stays up; the deep check says what is wrong.
            assert client.get("/health").status_code == 200
            deep = client.get("/health?deep=1")
            assert deep.status_code == 503
            assert "unavailable" in deep.json()["checks"]["database"]
            assert relay.alive
            print(f"\n[faults] PostgreSQL down: 503s for {time.perf_counter() - stopped_at:.2f} s")
        finally:
            private_pg.start()

        def healthy() -> bool:
            return client.post("/users", json={"app_id": "after-outage"}).status_code == 200

        recovery = _until(healthy, 15, "relay recovery after PostgreSQL restart")
        print(f"[faults] PostgreSQL back: relay served 200 again after {recovery * 1000:.0f} ms")
        # Data kept; the old token and key work again, with no restart of the relay.
        assert client.post(CHAT_PATH, json=CHAT, headers=user.headers).status_code == 200
        assert client.get("/keys", headers=user.headers).json()["providers"] == ["openai"]
        assert client.get("/health?deep=1").status_code == 200
    assert relay.alive
    messages = [line.get("msg") for line in _log_lines(relay)]
    assert "PostgreSQL unavailable; answering 503 until it returns" in messages
    assert "PostgreSQL reachable again" in messages


def _gauge(client: httpx.Client, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", client.get("/metrics").text, re.M)
    assert found, f"{name} missing from /metrics"
    return float(found.group(1))


@pytest.mark.postgres
def test_request_log_backlog_on_metrics_while_postgres_is_down(
    private_pg: PrivatePostgres, start_relay: StartRelay
) -> None:
    # Token and key cached for the whole outage: requests are served, their rows wait.
    relay = start_relay(DATABASE_URL=private_pg.url, DB_POOL_SIZE="3", CACHE_TTL_S="300")
    user = register_user(relay)
    user.store_key("openai", FAKE_KEY)
    pending = "byok_relay_request_log_pending"
    with relay.client(timeout=20) as client:
        assert client.post(CHAT_PATH, json=CHAT, headers=user.headers).status_code == 200
        _until(lambda: _gauge(client, pending) == 0, 10, "first row written")
        private_pg.stop()
        try:
            for _ in range(3):
                assert client.post(CHAT_PATH, json=CHAT, headers=user.headers).status_code == 200
            _until(lambda: _gauge(client, pending) == 3, 10, "three rows waiting")
        finally:
            private_pg.start()
        _until(lambda: _gauge(client, pending) == 0, 20, "backlog written after recovery")
        assert _gauge(client, "byok_relay_request_log_dropped_total") == 0
        assert client.get("/stats", headers=user.headers).json()["total"] == 4


@pytest.mark.postgres
def test_postgres_down_at_start_serves_503_then_recovers(
    private_pg: PrivatePostgres, start_relay: StartRelay
) -> None:
    private_pg.stop()
    try:
        relay = start_relay(DATABASE_URL=private_pg.url, DB_POOL_SIZE="3")
        with relay.client(timeout=20) as client:
            _json_error(client.post("/users", json={"app_id": "early"}), 503)
            assert client.get("/health").status_code == 200
            assert client.get("/health?deep=1").status_code == 503
            assert relay.alive
    finally:
        private_pg.start()
    with relay.client(timeout=20) as client:

        def registered() -> bool:
            return client.post("/users", json={"app_id": "later"}).status_code == 200

        waited = _until(registered, 30, "relay connecting after a late PostgreSQL")
        print(f"\n[faults] PostgreSQL up after the relay: served 200 after {waited:.2f} s")
    messages = [line.get("msg") for line in _log_lines(relay)]
    assert "database unavailable at start; answering 503 until it returns" in messages
    assert "database connected" in messages


# --- Redis down ----------------------------------------------------------------------------
@pytest.mark.redis
def test_redis_down_falls_back_to_local_counting(start_relay: StartRelay) -> None:
    redis = PrivateRedis().start()
    try:
        relay = start_relay(
            REDIS_URL=redis.url,
            REDIS_KEY_PREFIX="faults",
            RATE_LIMIT_RELAY="6/minute",
            CACHE_TTL_S="30",
        )
        user = register_user(relay)
        user.store_key("openai", FAKE_KEY)
        with relay.client(timeout=10) as client:

            def chat() -> int:
                return client.post(CHAT_PATH, json=CHAT, headers=user.headers).status_code

            assert [chat(), chat()] == [200, 200]  # 2 of 6 counted in Redis
            assert client.get("/health?deep=1").json()["checks"]["rate_limits"] == "redis"
            redis.stop()
            # Traffic continues, counted by this process from zero: 6 more, then 429.
            started = time.perf_counter()
            statuses = [chat() for _ in range(7)]
            elapsed = time.perf_counter() - started
            assert statuses == [200] * 6 + [429], statuses
            assert elapsed < 5, f"requests slowed down while Redis is down: {elapsed:.2f} s"
            assert (
                "redis unavailable" in client.get("/health?deep=1").json()["checks"]["rate_limits"]
            )
            # Management routes too (the bus announces fail quietly).
            fresh = register_user(relay)
            fresh.store_key("openai", FAKE_KEY)
            print(
                f"\n[faults] Redis down: 7 relay requests in {elapsed * 1000:.0f} ms, local limit"
            )

            redis.start()

            # The limiter retries Redis after a short pause; a request flips it back.
            def shared_again() -> bool:
                chat()
                return bool(client.get("/health?deep=1").json()["checks"]["rate_limits"] == "redis")

            back = _until(shared_again, 10, "shared counting back")
            print(f"[faults] Redis back: shared counting again after {back * 1000:.0f} ms")
        _until(
            lambda: relay.log_text().count("cache invalidation bus subscribed") >= 2,
            10,
            "bus resubscribed",
        )
        text = relay.log_text()
        assert "rate-limit store unavailable; counting per process until it returns" in text
        assert "cache invalidation bus unavailable" in text
        assert "rate-limit store reachable again" in text
        warnings = [
            line
            for line in _log_lines(relay)
            if line.get("level") == "warning" and "rate-limit" in str(line.get("msg"))
        ]
        assert warnings
        assert relay.alive
    finally:
        redis.stop()


@pytest.mark.redis
def test_redis_absent_at_start(start_relay: StartRelay) -> None:
    """REDIS_URL set but nothing listening: the relay starts and serves, counting locally."""
    redis = PrivateRedis()  # never started: a free port with nobody on it
    relay = start_relay(REDIS_URL=redis.url, RATE_LIMIT_RELAY="2/minute")
    user = register_user(relay)
    user.store_key("openai", FAKE_KEY)
    with relay.client(timeout=10) as client:
        codes = [
            client.post(CHAT_PATH, json=CHAT, headers=user.headers).status_code for _ in range(3)
        ]
    assert codes == [200, 200, 429]
    assert "rate-limit store unavailable" in relay.log_text()


@pytest.mark.redis
def test_redis_over_unix_socket(start_relay: StartRelay, tmp_path: Path) -> None:
    """REDIS_URL=unix://… works for the limiter and the bus alike."""
    redis = PrivateRedis(unix_socket=tmp_path / "redis.sock").start()
    try:
        relay = start_relay(REDIS_URL=redis.url, REDIS_KEY_PREFIX="unixsock")
        _until(lambda: "cache invalidation bus subscribed" in relay.log_text(), 10, "bus")
        user = register_user(relay)
        user.store_key("openai", FAKE_KEY)
        with relay.client(timeout=10) as client:
            assert client.post(CHAT_PATH, json=CHAT, headers=user.headers).status_code == 200
            assert client.get("/health?deep=1").json()["checks"]["rate_limits"] == "redis"
        assert any(k.startswith("unixsock:limits") for k in redis_keys(redis.url))
    finally:
        redis.stop()


# --- SIGTERM with open streams ---------------------------------------------------------------
class StreamReader(threading.Thread):
    def __init__(self, relay: Relay, user: User, model: str) -> None:
        super().__init__(daemon=True)
        self.relay, self.user, self.model = relay, user, model
        self.chunks: list[bytes] = []
        self.first = threading.Event()
        self.error: BaseException | None = None
        self.status = 0

    def run(self) -> None:
        body = {**CHAT, "model": self.model, "stream": True}
        try:
            with (
                self.relay.client(timeout=60) as client,
                client.stream("POST", CHAT_PATH, json=body, headers=self.user.headers) as r,
            ):
                self.status = r.status_code
                for chunk in r.iter_raw():
                    self.chunks.append(chunk)
                    self.first.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.first.set()

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


def _connect_refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        code = sock.connect_ex(("127.0.0.1", port))
    return code == errno.ECONNREFUSED


def test_sigterm_lets_open_streams_finish(start_relay: StartRelay, mocks: MockProviders) -> None:
    relay = start_relay(SHUTDOWN_GRACE_S="10")
    user = register_user(relay)
    user.store_key("openai", FAKE_KEY)
    readers = [StreamReader(relay, user, "mock-slow") for _ in range(2)]
    for reader in readers:
        reader.start()
    for reader in readers:
        assert reader.first.wait(10) and reader.error is None, reader.error
    sent = time.perf_counter()
    relay.proc.send_signal(signal.SIGTERM)
    refused = _until(lambda: _connect_refused(relay.port), 3, "listener closed after SIGTERM")
    code = relay.proc.wait(15)
    exited = time.perf_counter() - sent
    for reader in readers:
        reader.join(5)
        assert reader.error is None, reader.error
        assert reader.status == 200
        assert reader.text.rstrip().endswith("data: [DONE]"), reader.text[-200:]
        assert reader.text.count("chat.completion.chunk") >= SLOW_EVENTS
    assert code == 0, relay.log_tail()
    assert exited < 10  # SHUTDOWN_GRACE_S: the streams ended well before it
    print(
        f"\n[faults] SIGTERM: new connections refused after {refused * 1000:.0f} ms; "
        f"2 open streams finished; exit 0 after {exited:.2f} s"
    )


def test_sigterm_grace_period_cuts_endless_stream(start_relay: StartRelay) -> None:
    grace = 1.5
    relay = start_relay(SHUTDOWN_GRACE_S=str(grace))
    user = register_user(relay)
    user.store_key("openai", FAKE_KEY)
    reader = StreamReader(relay, user, "mock-long")  # 60 s of events
    reader.start()
    assert reader.first.wait(10)
    sent = time.perf_counter()
    relay.proc.send_signal(signal.SIGTERM)
    code = relay.proc.wait(15)
    exited = time.perf_counter() - sent
    reader.join(10)
    assert code == 0, relay.log_tail()
    assert grace - 0.2 <= exited < grace + 2.0, exited  # + process exit, on a loaded box
    assert not reader.is_alive()
    print(
        f"\n[faults] SIGTERM with an endless stream: exit 0 after {exited:.2f} s (grace {grace} s)"
    )


# --- serve --workers ------------------------------------------------------------------------
def _listening_pids(port: int) -> set[int]:
    """Pids holding a LISTEN socket on 127.0.0.1:port (read from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    pids.add(int(entry.name))
                    break
        except OSError:
            continue
    return pids


def test_serve_workers_two_processes_one_port(start_relay: StartRelay, tmp_path: Path) -> None:
    relay = start_relay(
        data_dir=tmp_path, extra_args=["--workers", "2"], RATE_LIMIT_GLOBAL="3/minute"
    )
    _until(lambda: relay.log_text().count("byok-relay listening") >= 2, 15, "both workers up")
    logged = {
        line["pid"] for line in _log_lines(relay) if line.get("msg") == "byok-relay listening"
    }
    assert len(logged) == 2 and relay.proc.pid not in logged
    assert _listening_pids(relay.port) == logged
    # Each worker counts its own (in-memory) 3/minute: over fresh connections more than 3
    # succeed, so more than one process answered on the port.
    ok = 0
    for _ in range(30):
        with httpx.Client(base_url=relay.url, trust_env=False, timeout=10) as client:
            if client.get("/version").status_code == 200:
                ok += 1
    assert ok == 6, f"{ok} requests succeeded; expected 3 per worker"
    # SIGTERM to the parent reaches both workers; all exit cleanly.
    assert relay.stop(signal.SIGTERM, timeout=20) == 0
    for pid in logged:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
