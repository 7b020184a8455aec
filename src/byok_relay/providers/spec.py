"""What a provider is, as data: upstream, auth style, allow-listed paths, headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from byok_relay.providers.paths import DEFAULT_MODEL_SHAPE


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
    # `**` any number of segments, `{model}` a model name of `model_shape`.
    paths: tuple[str, ...] = ()
    # Where a request names its model, read as the provider reads it (ALLOWED_MODELS and
    # token scopes check it): `{model}` in a path, a query parameter, a body field.
    model_shape: str = DEFAULT_MODEL_SHAPE  # regex for a model named in a path
    model_query: str | None = None
    model_field: str = "model"
    # Client headers passed upstream besides the common ones (lower-case names).
    pass_headers: tuple[str, ...] = ()
    # Sent when the client sent none (e.g. anthropic-version).
    default_headers: Mapping[str, str] = field(default_factory=dict)
    # Always sent, replacing any client value (operator-defined in PROVIDERS_FILE).
    fixed_headers: Mapping[str, str] = field(default_factory=dict)
    binary: bool = False  # audio/images: bodies pass byte for byte (documentation only)
    takes_base_url: bool = False  # accepts a stored base_url / x-relay-base-url
    # Where POST /relay sends "provider/model" bodies; `{model}` puts the model in the
    # path, and then `unified_drop_fields` leave the body (the path carries them).
    chat_path: str | None = None
    stream_chat_path: str | None = None  # instead of chat_path for "stream": true
    unified_drop_fields: tuple[str, ...] = ()
    # Accepts OpenAI's stream_options.include_usage on */chat/completions: the relay adds
    # it to streams that did not ask, to count tokens, and hides the extra chunk again.
    stream_usage_option: bool = False
    # Query parameters added when the client sent none: (path suffix, name, value).
    default_query: tuple[tuple[str, str, str], ...] = ()
    models: tuple[ModelPattern, ...] = ()  # bare-name routing for POST /relay
    verify_path: str | None = None  # cheap authenticated GET to check a key
    builtin: bool = True
