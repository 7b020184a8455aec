"""The container image, run for real with podman: the image built from the Dockerfile by
`.ci/container-test.sh` (which sets BYOK_CONTAINER_IMAGE), started as a user would start
it (secrets from `byok-relay init --stdout` in the image itself, an env file, a volume on
/data, read-only root, no capabilities), reached from the host and relaying to the mock
providers on the host. The container shares the host's network so everything stays on
127.0.0.1. Skips without the image; with REQUIRE_CONTAINER=1 a skip is a failure."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from providers.mock import MockProviders
from providers.relay import FAKE_KEY, free_port

IMAGE = os.environ.get("BYOK_CONTAINER_IMAGE", "")
#: The same Dockerfile built with RUN_AS=root (as fly.toml builds it).
ROOT_IMAGE = os.environ.get("BYOK_CONTAINER_ROOT_IMAGE", "")
#: The BUILD_COMMIT the image was built with (GET /version must show it).
COMMIT = os.environ.get("BYOK_CONTAINER_COMMIT", "")
REQUIRED = os.environ.get("REQUIRE_CONTAINER") == "1"
#: This machine refuses podman's default runtime (crun) and the host's ulimits.
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
#: As compose.yaml runs the relay.
HARDENING = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges"]  # fmt: skip
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
CHAT_PATH = "/relay/openai/v1/chat/completions"


def _unavailable() -> str | None:
    if not IMAGE:
        return "BYOK_CONTAINER_IMAGE is not set (bash .ci/container-test.sh builds the image)"
    if shutil.which("podman") is None:
        return "podman is not installed"
    for image in (IMAGE, ROOT_IMAGE or IMAGE):
        if subprocess.run([*PODMAN, "image", "exists", image], check=False).returncode != 0:
            return f"image {image} is not in podman's storage"
    return None


@pytest.fixture(scope="module", autouse=True)
def _image_present() -> None:
    reason = _unavailable()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"REQUIRE_CONTAINER=1 but {reason}")
        pytest.skip(reason)


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {args[0]} failed ({result.returncode}): {result.stderr}")
    return result


def init_stdout() -> str:
    """`docker run --rm IMAGE byok-relay init --stdout` (no network, nothing mounted)."""
    return podman("run", "--rm", *LIMITS, "--network", "none", IMAGE,
                  "byok-relay", "init", "--stdout").stdout  # fmt: skip


def env_values(text: str) -> dict[str, str]:
    pairs = (line.partition("=") for line in text.splitlines() if re.match(r"[A-Z_]+=", line))
    return {name: value for name, _, value in pairs}


@dataclass
class Container:
    name: str
    port: int
    volume: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self) -> dict[str, Any]:
        out = podman("inspect", "--format", "{{json .State}}", self.name).stdout
        return dict(json.loads(out))

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=2) as client:
            while True:
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if not self.state().get("Running") or time.monotonic() > deadline:
                    raise AssertionError(f"relay container not healthy:\n{self.logs()[-3000:]}")
                time.sleep(0.2)

    def stop(self) -> int:
        """SIGTERM (the image's STOPSIGNAL) with more time than SHUTDOWN_GRACE_S."""
        podman("stop", "--time", "40", self.name, timeout=60)
        return int(self.state()["ExitCode"])


StartContainer = Callable[..., Container]


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("container") / "relay.env"
    path.write_text(init_stdout())
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def start_container(mocks: MockProviders, env_file: Path) -> Iterator[StartContainer]:
    names: list[str] = []
    volumes: set[str] = set()

    def start(volume: str | None = None) -> Container:
        name = f"byok-ci-{secrets.token_hex(4)}"
        volume = volume or f"{name}-data"
        port = free_port()
        names.append(name)
        volumes.add(volume)
        podman(
            "run", "--detach", "--name", name, *LIMITS, *HARDENING,
            "--network", "host", "--env-file", str(env_file),
            "-e", "HOST=127.0.0.1", "-e", f"PORT={port}",
            "-e", f"PROVIDER_OPENAI_BASE_URL={mocks.openai.url}",
            "-v", f"{volume}:/data", IMAGE,
        )  # fmt: skip
        container = Container(name=name, port=port, volume=volume)
        container.wait_healthy()
        return container

    yield start
    for name in names:
        podman("rm", "--force", "--time", "0", name, check=False)
    for volume in volumes:
        podman("volume", "rm", "--force", volume, check=False)


@pytest.fixture(scope="module")
def container(start_container: StartContainer) -> Container:
    return start_container()


def register_and_store(client: httpx.Client) -> str:
    r = client.post("/users", json={"app_id": "container-test"})
    assert r.status_code == 200, r.text
    token = str(r.json()["token"])
    r = client.post("/keys/openai", json={"key": FAKE_KEY}, headers={"x-relay-token": token})
    assert r.status_code == 200, r.text
    return token


# --- tests -----------------------------------------------------------------------------------
def test_init_stdout_in_the_image_makes_fresh_secrets() -> None:
    first, second = env_values(init_stdout()), env_values(init_stdout())
    for values in (first, second):
        assert re.fullmatch(r"[0-9a-f]{64}", values["ENCRYPTION_SECRET"])
        assert re.fullmatch(r"[0-9a-f]{64}", values["TOKEN_HMAC_SECRET"])
    assert first["ENCRYPTION_SECRET"] != second["ENCRYPTION_SECRET"]


def test_image_runs_unprivileged_with_its_healthcheck(container: Container) -> None:
    assert podman("exec", container.name, "id", "-u").stdout.strip() == "10001"
    health = podman("image", "inspect", "--format", "{{json .HealthCheck}}", IMAGE).stdout
    test = json.loads(health)["Test"]
    assert test[0] == "CMD" and test[1] == "python3", test
    # The image's own HEALTHCHECK command, inside the running container.
    assert podman("exec", container.name, *test[1:], check=False).returncode == 0
    broken = podman("exec", "-e", f"PORT={free_port()}", container.name, *test[1:], check=False)
    assert broken.returncode != 0


def test_health_version_and_sqlite_in_the_volume(container: Container) -> None:
    with httpx.Client(base_url=container.url, trust_env=False, timeout=10) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["ok"] is True
        version = client.get("/version")
        assert version.status_code == 200 and version.json()["version"]
        if COMMIT:  # the build arguments reached the image (no stale build cache)
            assert version.json()["commit"] == COMMIT, version.json()
    listing = podman("exec", container.name, "ls", "/data").stdout.split()
    assert "relay.db" in listing, listing


def test_register_store_key_and_relay_to_a_mock(container: Container, mocks: MockProviders) -> None:
    with httpx.Client(base_url=container.url, trust_env=False, timeout=30) as client:
        token = register_and_store(client)
        headers = {"x-relay-token": token}
        r = client.post(CHAT_PATH, json=CHAT, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["object"] == "chat.completion"
        upstream = mocks.openai.last_request
        assert upstream.path.endswith("/v1/chat/completions")
        assert upstream.headers["authorization"] == f"Bearer {FAKE_KEY}"
        events = []
        with client.stream("POST", CHAT_PATH, json={**CHAT, "stream": True}, headers=headers) as s:
            assert s.status_code == 200
            assert s.headers["content-type"].startswith("text/event-stream")
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) > 2, events


def test_graceful_stop_and_data_survive_a_restart(
    start_container: StartContainer, env_file: Path
) -> None:
    first = start_container()
    with httpx.Client(base_url=first.url, trust_env=False, timeout=30) as client:
        token = register_and_store(client)
    assert first.stop() == 0, first.logs()[-3000:]
    logs = first.logs()
    assert "listening" in logs
    for secret in (FAKE_KEY, token, env_values(env_file.read_text())["ENCRYPTION_SECRET"]):
        assert secret not in logs
    second = start_container(volume=first.volume)
    with httpx.Client(base_url=second.url, trust_env=False, timeout=30) as client:
        r = client.post(CHAT_PATH, json=CHAT, headers={"x-relay-token": token})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("variant", "user"),
    [("RUN_AS=root", []), ("default image run as root", ["--user", "0"])],
)
def test_root_owned_volume_is_given_to_the_relay_user(
    variant: str, user: list[str], env_file: Path, mocks: MockProviders, tmp_path: Path
) -> None:
    """Platforms mount a fresh volume root-owned (Fly, Railway): started as root, the image
    gives /data to uid 10001 and runs the relay as that uid, never as root."""
    image = ROOT_IMAGE if variant == "RUN_AS=root" else IMAGE
    if not image:
        pytest.fail("BYOK_CONTAINER_ROOT_IMAGE is not set (bash .ci/container-test.sh sets it)")
    volume = tmp_path / "volume"
    volume.mkdir(mode=0o755)
    assert volume.stat().st_uid == 0  # root-owned, as a platform's fresh volume
    name = f"byok-ci-{secrets.token_hex(4)}"
    container = Container(name=name, port=free_port(), volume=str(volume))
    try:
        podman(
            "run", "--detach", "--name", name, *LIMITS, *user, "--network", "host",
            "--env-file", str(env_file), "-e", "HOST=127.0.0.1", "-e", f"PORT={container.port}",
            "-e", f"PROVIDER_OPENAI_BASE_URL={mocks.openai.url}",
            "-v", f"{volume}:/data", image,
        )  # fmt: skip
        container.wait_healthy()
        status = podman("exec", name, "cat", "/proc/1/status").stdout
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
        assert uids and set(uids.group(1).split()) == {"10001"}, status
        with httpx.Client(base_url=container.url, trust_env=False, timeout=30) as client:
            token = register_and_store(client)
            r = client.post(CHAT_PATH, json=CHAT, headers={"x-relay-token": token})
            assert r.status_code == 200, r.text
        assert container.stop() == 0, container.logs()[-3000:]
        assert volume.stat().st_uid == 10001 and (volume.stat().st_mode & 0o777) == 0o700
        assert (volume / "relay.db").stat().st_uid == 10001
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)
