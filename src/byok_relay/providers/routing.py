"""POST /relay model routing and the ALLOWED_MODELS allowlist."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from byok_relay.providers.registry import Provider, ProviderRegistry


def _globs_to_regex(globs: list[str]) -> re.Pattern[str] | None:
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs), re.IGNORECASE)


class ModelAllowlist:
    """A model passes when its bare name or `provider/name` matches a pattern."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = patterns
        self._regex = _globs_to_regex(patterns)

    @property
    def active(self) -> bool:
        return self._regex is not None

    def allows(self, provider: str, model: str) -> bool:
        if self._regex is None:
            return True
        match = self._regex.match
        return bool(match(model) or match(f"{provider}/{model}"))


class Unroutable(ValueError):
    """The model names a provider but cannot go to it; ``str(exc)`` says why (400)."""


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    path: str  # not yet checked: the relay normalises it and applies the path allowlist
    model: str  # the name sent upstream (provider prefix removed)


class ModelRouter:
    def __init__(self, registry: ProviderRegistry) -> None:
        self._registry = registry
        self.patterns: list[tuple[str, str, str | None]] = [
            (mp.glob, p.name, mp.path) for p in registry for mp in p.spec.models
        ]
        self._compiled = [
            (re.compile(fnmatch.translate(g), re.IGNORECASE), name, path)
            for g, name, path in self.patterns
        ]

    def _route(
        self, provider: Provider, model: str, stream: bool, path: str | None
    ) -> Route | None:
        """Where POST /relay sends `model`: the pattern's path, else the provider's (stream)
        chat path, `{model}` filled in; None when the provider has none."""
        spec = provider.spec
        template = path or (stream and spec.stream_chat_path) or spec.chat_path
        if not template:
            return None
        if "{model}" in template and not provider.model_shape.fullmatch(model):
            # The model goes into the path: it must be a model name, never path syntax.
            raise Unroutable(
                f'"{model}" is not a valid {provider.name} model name (letters, digits, '
                "'.', '-' and '_'); a model name never carries path syntax."
            )
        return Route(provider, template.replace("{model}", model), model)

    def resolve(self, model: str, stream: bool) -> Route | None:
        """The route for `model`; None when nothing matches; Unroutable when the model
        matches a provider but cannot be put where that provider reads it."""
        prefix, sep, rest = model.partition("/")
        if sep:
            provider = self._registry.get(prefix.lower())
            if provider is not None and rest:
                return self._route(provider, rest, stream, None)
        for regex, name, path in self._compiled:
            if regex.match(model):
                provider = self._registry.get(name)
                if provider is not None:
                    return self._route(provider, model, stream, path)
        return None
