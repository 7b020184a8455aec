"""byok-relay: a relay that lets browser apps call AI providers with their users' own keys."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("byok-relay")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
