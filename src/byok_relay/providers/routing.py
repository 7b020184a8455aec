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


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    path: str
    model: str  # the name sent upstream (provider prefix removed)


_GEMINI_MODEL = re.compile(r"/models/([^/:]+)")


def gemini_path(model: str, stream: bool) -> str:
    if stream:
        return f"/v1beta/models/{model}:streamGenerateContent"
    return f"/v1beta/models/{model}:generateContent"


def model_in_path(path: str) -> str | None:
    """Gemini carries the model in the path: /v1beta/models/{model}:generateContent."""
    m = _GEMINI_MODEL.search(path)
    return m.group(1) if m else None


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

    def _path_for(self, provider: Provider, model: str, stream: bool, path: str | None) -> str:
        if provider.name == "google":
            return gemini_path(model, stream)
        return path or provider.spec.chat_path or ""

    def resolve(self, model: str, stream: bool) -> Route | None:
        prefix, sep, rest = model.partition("/")
        if sep:
            provider = self._registry.get(prefix.lower())
            if provider is not None and rest:
                target = self._path_for(provider, rest, stream, None)
                return Route(provider, target, rest) if target else None
        for regex, name, path in self._compiled:
            if regex.match(model):
                provider = self._registry.get(name)
                if provider is not None:
                    return Route(provider, self._path_for(provider, model, stream, path), model)
        return None
