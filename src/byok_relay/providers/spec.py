"""What a provider is, as data: upstream, auth style, allow-listed paths, headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelPattern:
    """A bare model name glob routed to this provider by POST /relay (path: override)."""

    glob: str
    path: str | None = None


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    # None: the upstream comes from the client (stored base_url or x-relay-base-url).
    base_url: str | None
    # Credential placement: a header (with a prefix such as "Bearer ") or a query param.
    auth_header: str | None = "authorization"
    auth_prefix: str = "Bearer "
    auth_query: str | None = None
    # Allow-listed paths: "/v1/x" (POST), "GET /v1/models", "* /x"; `*` one segment part,
    # `**` any number of segments.
    paths: tuple[str, ...] = ()
    # Client headers passed upstream besides the common ones (lower-case names).
    pass_headers: tuple[str, ...] = ()
    # Sent when the client sent none (e.g. anthropic-version).
    default_headers: Mapping[str, str] = field(default_factory=dict)
    # Always sent, replacing any client value (operator-defined in PROVIDERS_FILE).
    fixed_headers: Mapping[str, str] = field(default_factory=dict)
    binary: bool = False  # audio/images: bodies pass byte for byte (documentation only)
    takes_base_url: bool = False  # accepts a stored base_url / x-relay-base-url
    chat_path: str | None = None  # where POST /relay sends "provider/model" bodies
    models: tuple[ModelPattern, ...] = ()  # bare-name routing for POST /relay
    verify_path: str | None = None  # cheap authenticated GET to check a key
    builtin: bool = True
