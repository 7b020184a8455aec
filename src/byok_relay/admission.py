"""Admission: the ordered checks a relayed request passes before anything goes upstream.

client limit → credential → token scope → per-user limit → budget (SPEC §9,
docs/spend-control.md). Each check is a small object with one job that refuses with its
own JSON error; the lists are built once at start. Two phases, because some checks need
what only the body says: `before_body` runs on the request alone (so an unauthenticated
or out-of-scope request never costs a body parse), `before_call` once the provider and
the model the provider will read are known. A new kind of check is one class and one
line in `Admission.build`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiohttp import web

from byok_relay.auth import Authenticator, Principal
from byok_relay.errors import ApiError
from byok_relay.ratelimit import ClientAddress, RateLimiter
from byok_relay.spend import Reservation, SpendControl


class Ticket:
    """What admission has learnt about one request, filled in as the checks run."""

    __slots__ = ("models", "principal", "provider", "request", "reservation")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.principal: Principal | None = None
        self.provider: str | None = None
        #: Every model the provider could read in the request (path, query, body).
        self.models: Sequence[str] = ()
        self.reservation: Reservation | None = None

    @property
    def who(self) -> Principal:
        assert self.principal is not None, "the credential check runs first"
        return self.principal


class Check(Protocol):
    async def __call__(self, ticket: Ticket) -> None:
        """Refuse with ApiError, or return to let the next check run."""


class ClientLimit:
    """RATE_LIMIT_GLOBAL per client address."""

    def __init__(self, limiter: RateLimiter, client_address: ClientAddress) -> None:
        self._limiter = limiter
        self._client_address = client_address

    async def __call__(self, ticket: Ticket) -> None:
        await self._limiter.check("global", self._client_address.bucket(ticket.request))


class Credential:
    """A relay token or a scoped token, from the four credential headers."""

    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    async def __call__(self, ticket: Ticket) -> None:
        principal = await self._auth.authenticate(ticket.request.headers)
        ticket.principal = principal
        ticket.request["user_id"] = principal.user_id


class RequestScope:
    """A scoped token's origins and client networks."""

    def __init__(self, client_address: ClientAddress) -> None:
        self._client_address = client_address

    async def __call__(self, ticket: Ticket) -> None:
        scoped = ticket.who.scoped
        if scoped is None:
            return
        request = ticket.request
        refusal = scoped.scope.refuse_request(
            request.headers.get("origin"), self._client_address(request)
        )
        if refusal is not None:
            raise ApiError(403, refusal, extra={"code": "scope_refused"})


class CallScope:
    """A scoped token's providers and models (the model the provider will read)."""

    async def __call__(self, ticket: Ticket) -> None:
        scoped = ticket.who.scoped
        if scoped is None:
            return
        assert ticket.provider is not None
        refusal = scoped.scope.refuse_call(ticket.provider, ticket.models)
        if refusal is not None:
            raise ApiError(403, refusal, extra={"code": "scope_refused"})


class UserLimit:
    """RATE_LIMIT_RELAY per user: every credential of a user shares one bucket, so a new
    token (POST /tokens/rotate, a fresh scoped token) does not hand out a fresh one."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    async def __call__(self, ticket: Ticket) -> None:
        await self._limiter.check("relay", ticket.who.user_id)


class BudgetCheck:
    """The owner's budget and a scoped token's budget: reserves this request (429 when
    a cap is reached). The relay settles or releases the reservation."""

    def __init__(self, spend: SpendControl) -> None:
        self._spend = spend

    async def __call__(self, ticket: Ticket) -> None:
        assert ticket.provider is not None
        ticket.reservation = await self._spend.reserve(ticket.who, ticket.provider)


class Admission:
    def __init__(self, before_body: list[Check], before_call: list[Check]) -> None:
        self.before_body = tuple(before_body)
        self.before_call = tuple(before_call)

    @classmethod
    def build(
        cls,
        limiter: RateLimiter,
        client_address: ClientAddress,
        auth: Authenticator,
        spend: SpendControl,
    ) -> Admission:
        return cls(
            before_body=[
                ClientLimit(limiter, client_address),
                Credential(auth),
                RequestScope(client_address),
            ],
            before_call=[CallScope(), UserLimit(limiter), BudgetCheck(spend)],
        )

    async def admit(self, request: web.Request) -> Ticket:
        ticket = Ticket(request)
        for check in self.before_body:
            await check(ticket)
        return ticket

    async def authorize(self, ticket: Ticket, provider: str, models: Sequence[str]) -> None:
        ticket.provider = provider
        ticket.models = models
        for check in self.before_call:
            await check(ticket)
