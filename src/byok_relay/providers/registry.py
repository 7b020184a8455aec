"""The providers in force: built-ins, then PROVIDERS_FILE, then PROVIDER_<NAME>_BASE_URL.

Everything here is computed once at start; the hot path only reads `Provider` fields.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from byok_relay.providers.builtin import BUILTIN_PROVIDERS
from byok_relay.providers.paths import PathMatcher, compile_path_patterns
from byok_relay.providers.spec import ModelPattern, ProviderSpec

# Client headers every provider receives (besides its own pass_headers). Everything
# else — credentials, cookies, origin, forwarding and hop-by-hop headers — stays here.
COMMON_PASS_HEADERS = frozenset({"content-type", "accept", "accept-encoding", "idempotency-key"})


class ProviderConfigError(ValueError):
    """PROVIDERS_FILE or a PROVIDER_<NAME>_BASE_URL is wrong; the message names it."""


@dataclass(frozen=True)
class Provider:
    spec: ProviderSpec
    name: str
    base_url: str | None  # None: client-supplied (openai-compatible)
    matcher: PathMatcher
    model_shape: re.Pattern[str]  # a model named in a path ({model})
    pass_headers: frozenset[str]
    auth_header: str | None
    auth_prefix: str
    auth_query: str | None
    default_headers: tuple[tuple[str, str], ...]
    fixed_headers: tuple[tuple[str, str], ...]

    @classmethod
    def build(cls, spec: ProviderSpec) -> Provider:
        return cls(
            spec=spec,
            name=spec.name,
            base_url=spec.base_url.rstrip("/") if spec.base_url else None,
            matcher=compile_path_patterns(spec.paths, spec.model_shape),
            model_shape=re.compile(spec.model_shape),
            pass_headers=COMMON_PASS_HEADERS | {h.lower() for h in spec.pass_headers},
            auth_header=spec.auth_header.lower() if spec.auth_header else None,
            auth_prefix=spec.auth_prefix,
            auth_query=spec.auth_query,
            default_headers=tuple((k.lower(), v) for k, v in spec.default_headers.items()),
            fixed_headers=tuple((k.lower(), v) for k, v in spec.fixed_headers.items()),
        )


def env_name(provider: str) -> str:
    """The NAME in PROVIDER_<NAME>_BASE_URL: upper-cased, '-' → '_'."""
    return provider.upper().replace("-", "_")


class ProviderRegistry:
    def __init__(self, specs: list[ProviderSpec]) -> None:
        self._providers = {s.name: Provider.build(s) for s in specs}
        self.names: list[str] = sorted(self._providers)

    def get(self, name: str) -> Provider | None:
        return self._providers.get(name)

    def unknown(self, name: str, *, capital: bool = True) -> str:
        """What to tell a caller who named no provider of ours: a typo's likely meaning
        first, then the whole list."""
        close = difflib.get_close_matches(name.lower(), self.names, n=1, cutoff=0.6)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        first = "Unsupported" if capital else "unsupported"
        return f'{first} provider "{name[:64]}".{hint} Supported: {", ".join(self.names)}.'

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._providers.values())

    @classmethod
    def load(
        cls, providers_file: Path | None = None, base_url_overrides: dict[str, str] | None = None
    ) -> ProviderRegistry:
        specs = {s.name: s for s in BUILTIN_PROVIDERS}
        if providers_file is not None:
            try:
                for spec in load_providers_file(providers_file, specs):
                    specs[spec.name] = spec
            except ProviderConfigError as exc:
                raise ProviderConfigError(f"PROVIDERS_FILE: {exc}") from None
        overrides = base_url_overrides or {}
        known = {env_name(name) for name in specs}
        for var_name in sorted(set(overrides) - known):
            # A typo would silently send keys to the real provider instead.
            raise ProviderConfigError(
                f"PROVIDER_{var_name}_BASE_URL names no provider; the names are "
                + ", ".join(f"PROVIDER_{n}_BASE_URL" for n in sorted(known))
            )
        for name, spec in list(specs.items()):
            url = overrides.get(env_name(name))
            if url:
                # Operator settings are trusted: http and private addresses allowed.
                specs[name] = replace(spec, base_url=url, takes_base_url=False)
        return cls(list(specs.values()))


def _str_tuple(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProviderConfigError(f"{where}: must be a list of strings")
    return tuple(value)


def _str_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ProviderConfigError(f"{where}: must be a table of strings")
    return dict(value)


_KNOWN_KEYS = {
    "base_url", "auth", "paths", "headers", "pass_headers", "binary",
    "chat_path", "models", "verify_path", "default_headers",
    "model_field", "model_query", "model_shape", "stream_usage_option",
}  # fmt: skip


def load_providers_file(path: Path, existing: dict[str, ProviderSpec]) -> list[ProviderSpec]:
    """Parse PROVIDERS_FILE; an entry named like a built-in overrides the fields it gives."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProviderConfigError(f"cannot read {path}: {exc}") from None
    table = data.get("providers")
    if not isinstance(table, dict) or not table:
        raise ProviderConfigError("expected at least one [providers.<name>] table")
    specs: list[ProviderSpec] = []
    for name, entry in table.items():
        where = f"providers.{name}"
        if not isinstance(entry, dict):
            raise ProviderConfigError(f"{where}: must be a table")
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ProviderConfigError(f"{where}: names may use letters, digits, '-' and '_'")
        unknown = set(entry) - _KNOWN_KEYS
        if unknown:
            raise ProviderConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        base = existing.get(name)
        fields: dict[str, Any] = {"builtin": False}
        if "base_url" in entry:
            url = entry["base_url"]
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ProviderConfigError(f"{where}.base_url: must be an http(s) URL")
            fields["base_url"] = url.rstrip("/")
            fields["takes_base_url"] = False
        elif base is None:
            raise ProviderConfigError(f"{where}.base_url: required for a new provider")
        if "auth" in entry:
            auth = entry["auth"]
            if not isinstance(auth, dict) or not (("header" in auth) ^ ("query" in auth)):
                raise ProviderConfigError(
                    f"{where}.auth: give either {{ header = …, prefix = … }} or {{ query = … }}"
                )
            if "header" in auth:
                fields.update(
                    auth_header=str(auth["header"]),
                    auth_prefix=str(auth.get("prefix", "")),
                    auth_query=None,
                )
            else:
                fields.update(auth_header=None, auth_prefix="", auth_query=str(auth["query"]))
        if "paths" in entry:
            fields["paths"] = _str_tuple(entry["paths"], f"{where}.paths")
        elif base is None:
            raise ProviderConfigError(f"{where}.paths: required for a new provider")
        if "headers" in entry:
            fields["fixed_headers"] = _str_map(entry["headers"], f"{where}.headers")
        if "default_headers" in entry:
            fields["default_headers"] = _str_map(
                entry["default_headers"], f"{where}.default_headers"
            )
        if "pass_headers" in entry:
            fields["pass_headers"] = _str_tuple(entry["pass_headers"], f"{where}.pass_headers")
        if "binary" in entry:
            fields["binary"] = bool(entry["binary"])
        if "stream_usage_option" in entry:
            if not isinstance(entry["stream_usage_option"], bool):
                raise ProviderConfigError(f"{where}.stream_usage_option: must be true or false")
            fields["stream_usage_option"] = entry["stream_usage_option"]
        for key in ("chat_path", "verify_path"):
            if key in entry:
                if not isinstance(entry[key], str) or not entry[key].startswith("/"):
                    raise ProviderConfigError(f"{where}.{key}: must be a path starting with /")
                fields[key] = entry[key]
        for key in ("model_field", "model_query", "model_shape"):
            if key in entry:
                if not isinstance(entry[key], str) or not entry[key]:
                    raise ProviderConfigError(f"{where}.{key}: must be a non-empty string")
                fields[key] = entry[key]
        if "models" in entry:
            fields["models"] = tuple(
                ModelPattern(g) for g in _str_tuple(entry["models"], f"{where}.models")
            )
        try:
            spec = replace(base, **fields) if base else ProviderSpec(name=name, **fields)
            compile_path_patterns(spec.paths, spec.model_shape)
        except (TypeError, ValueError) as exc:
            raise ProviderConfigError(f"{where}: {exc}") from None
        specs.append(spec)
    return specs
