"""What a scoped token may do (SPEC §9): providers, models, origins, client networks and
a lifetime budget — stored as JSON, compiled once per cache fill, checked per request.

An absent field means "no restriction of that kind". Every refusal names its rule, so a
frontend developer can tell a wrong origin from a spent budget.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)
def client_ip(client: str) -> IPAddress | None:
    """The client address as `ips` are checked (an IPv4-mapped IPv6 address as IPv4);
    memoized, since a client sends many requests from one address."""
    try:
        ip = ipaddress.ip_address(client.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class Scope:
    providers: frozenset[str] | None = None
    models: tuple[str, ...] | None = None  # globs, case-insensitive
    origins: frozenset[str] | None = None
    ips: tuple[IPNetwork, ...] | None = None
    budget_requests: int | None = None
    budget_tokens: int | None = None
    _model_regex: re.Pattern[str] | None = None

    @classmethod
    def build(
        cls,
        providers: list[str] | None = None,
        models: list[str] | None = None,
        origins: list[str] | None = None,
        ips: list[str] | None = None,
        budget_requests: int | None = None,
        budget_tokens: int | None = None,
    ) -> Scope:
        regex = None
        if models is not None:
            regex = re.compile(
                "|".join(f"(?:{fnmatch.translate(g)})" for g in models) or r"(?!)", re.IGNORECASE
            )
        return cls(
            providers=frozenset(providers) if providers is not None else None,
            models=tuple(models) if models is not None else None,
            origins=frozenset(origins) if origins is not None else None,
            ips=tuple(ipaddress.ip_network(c, strict=False) for c in ips)
            if ips is not None
            else None,
            budget_requests=budget_requests,
            budget_tokens=budget_tokens,
            _model_regex=regex,
        )

    # --- storage form --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The scope as the API shows it and the database keeps it (absent = unlimited)."""
        out: dict[str, Any] = {}
        if self.providers is not None:
            out["providers"] = sorted(self.providers)
        if self.models is not None:
            out["models"] = list(self.models)
        if self.origins is not None:
            out["origins"] = sorted(self.origins)
        if self.ips is not None:
            out["ips"] = [str(n) for n in self.ips]
        budget = {
            k: v
            for k, v in (("requests", self.budget_requests), ("tokens", self.budget_tokens))
            if v is not None
        }
        if budget:
            out["budget"] = budget
        return out

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_json(cls, text: str) -> Scope:
        d = orjson.loads(text) if text else {}
        budget = d.get("budget") or {}
        return cls.build(
            d.get("providers"),
            d.get("models"),
            d.get("origins"),
            d.get("ips"),
            budget.get("requests"),
            budget.get("tokens"),
        )

    @property
    def has_budget(self) -> bool:
        return self.budget_requests is not None or self.budget_tokens is not None

    # --- checks (each returns the refusal message, or None) ----------------------------
    def refuse_request(self, origin: str | None, client: str) -> str | None:
        """What the request itself shows: its Origin and client address."""
        if self.origins is not None:
            if origin is None:
                return (
                    "This scoped token is bound to origins "
                    f"{', '.join(sorted(self.origins))}; the request carries no Origin header."
                )
            if origin.rstrip("/") not in self.origins:
                return f'Origin "{origin}" is outside this scoped token\'s origins.'
        if self.ips is not None:
            ip = client_ip(client)
            if ip is None:
                return "The client address cannot be checked against this scoped token's ips."
            if not any(ip in net for net in self.ips):
                return f"Client address {client} is outside this scoped token's ips."
        return None

    def refuse_call(self, provider: str, models: Sequence[str]) -> str | None:
        """What the call goes to: the provider and every model the provider could read."""
        if self.providers is not None and provider not in self.providers:
            return (
                f'Provider "{provider}" is outside this scoped token\'s providers '
                f"({', '.join(sorted(self.providers))})."
            )
        if self._model_regex is not None:
            if not models:
                return "This scoped token is limited to some models; the request names none."
            for model in models:
                if not self._model_regex.match(model):
                    return f'Model "{model}" is outside this scoped token\'s models.'
        return None
