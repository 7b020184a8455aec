"""byok-relay: a relay that lets browser apps call AI providers with their users' own keys."""

# The one place the version is written: pyproject.toml reads it from here (dynamic), the
# npm package's version is checked against it, and CHANGELOG.md names each release.
__version__ = "0.2.0"

__all__ = ["__version__"]
