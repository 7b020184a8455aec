"""Providers: the built-in table, custom TOML providers, path and model allowlists."""

from byok_relay.providers.registry import Provider, ProviderConfigError, ProviderRegistry
from byok_relay.providers.routing import ModelAllowlist, ModelRouter, Route, Unroutable
from byok_relay.providers.spec import ModelPattern, ProviderSpec

__all__ = [
    "ModelAllowlist",
    "ModelPattern",
    "ModelRouter",
    "Provider",
    "ProviderConfigError",
    "ProviderRegistry",
    "ProviderSpec",
    "Route",
    "Unroutable",
]
