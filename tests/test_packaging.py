"""The package as users install it: a wheel and an sdist that `twine check` accepts, with
every file the relay serves inside, installed into a fresh virtualenv and started."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from providers.relay import TEST_ENCRYPTION_SECRET, free_port, http_client
from test_cli import cli_env

import byok_relay

ROOT = Path(__file__).resolve().parents[1]
HTTP = http_client()


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return out


def test_version_has_one_source() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", byok_relay.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {byok_relay.__version__} " in changelog, "CHANGELOG.md names the release"


def test_wheel_and_sdist_pass_twine_and_carry_every_served_file(dist: Path) -> None:
    files = sorted(p.name for p in dist.iterdir())
    version = byok_relay.__version__
    assert files == [f"byok_relay-{version}-py3-none-any.whl", f"byok_relay-{version}.tar.gz"]
    subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    names = set(zipfile.ZipFile(dist / files[0]).namelist())
    static = ROOT / "src" / "byok_relay" / "static"
    served = {
        f"byok_relay/{p.relative_to(static.parent)}" for p in static.rglob("*") if p.is_file()
    }
    assert served - names == set(), "files under static/ missing from the wheel"
    assert f"byok_relay-{version}.dist-info/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(dist / files[0]).read(f"byok_relay-{version}.dist-info/METADATA")
    assert b"License-Expression: Apache-2.0" in metadata


def test_fresh_venv_installs_the_wheel_and_serves(dist: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    wheel = next(dist.glob("*.whl"))
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    exe = env_dir / "bin" / "byok-relay"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"byok-relay {byok_relay.__version__}"
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=cli_env(ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET, LOG_FORMAT="json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # started when it says where to open it
            if '"byok-relay listening"' in line:
                break
        base = f"http://127.0.0.1:{port}"
        for path in ("/", "/demo", "/docs", "/client.js", "/skill"):
            r = HTTP.get(base + path, timeout=10)
            assert r.status_code == 200, (path, r.status_code)
        assert HTTP.get(base + "/version", timeout=10).json()["version"] == byok_relay.__version__
    finally:
        proc.terminate()
        proc.wait(timeout=30)
