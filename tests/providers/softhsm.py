"""A throwaway SoftHSM2 token per test: a real PKCS#11 token for key custody (SPEC §11).

Each `SoftHsm` has its own `SOFTHSM2_CONF` and token directory under the test's
temporary directory, initialised with `softhsm2-util` (Debian package `softhsm2`).
`lose()` moves the token directory away (the library then fails every call, as when a
network HSM is gone) and `restore()` puts it back. PINs are obviously fake.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from backends import service_missing

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)
TEST_PIN = "test-only-1234"
TEST_SO_PIN = "test-only-so-5678"
TOKEN_LABEL = "byok-relay-test"
KEY_LABEL = "byok-relay-test-master"


def softhsm_module() -> str:
    for candidate in MODULE_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    service_missing("SoftHSM2 is not installed (Debian package softhsm2)")
    raise AssertionError("unreachable")


class SoftHsm:
    def __init__(self, directory: Path) -> None:
        self.module = softhsm_module()
        if shutil.which("softhsm2-util") is None:
            service_missing("softhsm2-util is not installed (Debian package softhsm2)")
        self.directory = directory
        self.tokens = directory / "tokens"
        self.tokens.mkdir(parents=True)
        self.conf = directory / "softhsm2.conf"
        self.conf.write_text(
            f"directories.tokendir = {self.tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL,
             "--pin", TEST_PIN, "--so-pin", TEST_SO_PIN],
            env={"SOFTHSM2_CONF": str(self.conf), "PATH": "/usr/bin:/bin"},
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def env(self, **overrides: str) -> dict[str, str]:
        """The relay's settings for this token (KEY_CUSTODY=pkcs11)."""
        return {
            "SOFTHSM2_CONF": str(self.conf),
            "KEY_CUSTODY": "pkcs11",
            "PKCS11_MODULE": self.module,
            "PKCS11_TOKEN_LABEL": TOKEN_LABEL,
            "PKCS11_PIN": TEST_PIN,
            "PKCS11_KEY_LABEL": KEY_LABEL,
            **overrides,
        }

    def lose(self) -> None:
        self.tokens.rename(self.directory / "tokens-away")

    def restore(self) -> None:
        (self.directory / "tokens-away").rename(self.tokens)
