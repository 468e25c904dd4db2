"""Who is calling: every route but ``/health`` (and the API docs) names the role it needs.

A caller presents an API key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; no
key or an unknown one is 401, a key over its request budget 429, a role too weak for the
route 403. With ``auth_enabled: false``
(only ever set explicitly, for a local demo) every caller is ``local`` with the admin role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from derim.api.deps import get_services
from derim.errors import AuthenticationError, PermissionDeniedError, RateLimitedError
from derim.security.audit import AuditEntry
from derim.security.keys import Role
from derim.services import Services


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller of a request."""

    name: str
    role: Role
    key_id: str | None = None

    @property
    def label(self) -> str:
        """How the audit log names the caller."""
        return self.name if self.key_id is None else f"{self.name} ({self.key_id})"


LOCAL = Caller("local", Role.ADMIN)
"""The caller when authentication is disabled."""


def presented_token(
    authorization: str | None, x_api_key: str | None, api_key: str | None = None
) -> str | None:
    """The key from ``Authorization: Bearer``, else ``X-API-Key``, else an ``api_key`` query
    value (for browsers' WebSockets and EventSources)."""
    if authorization is not None and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return x_api_key or api_key


def authenticate(services: Services, token: str | None, role: Role) -> Caller:
    """The caller presenting ``token``, if it may act as ``role``; the errors say why not."""
    if not services.settings.auth_enabled:
        return LOCAL
    if not token:
        raise AuthenticationError(
            "an API key is required: Authorization: Bearer <key> or X-API-Key: <key>"
        )
    # An indexed lookup of tens of microseconds, done in place: handing it to a thread
    # (and queueing for the store's lock there) cost more than the lookup itself.
    key = services.keys.verify(token)
    if key is None:
        raise AuthenticationError("unknown or revoked API key")
    wait_s = services.rate_limiter.take(key.key_id)
    if wait_s > 0:
        rate = services.settings.rate_limit_per_s
        raise RateLimitedError(f"the key {key.key_id} is over its {rate:g} requests/s", wait_s)
    if not key.role.allows(role):
        raise PermissionDeniedError(
            f"this needs the {role.value} role; the key {key.key_id} is {key.role.value}"
        )
    return Caller(key.name, key.role, key.key_id)


def requires(role: Role) -> object:
    """A dependency that admits callers with ``role`` or a stronger one."""

    async def check(
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> Caller:
        token = presented_token(authorization, x_api_key)
        return authenticate(get_services(request), token, role)

    return Depends(check)


Viewer = Annotated[Caller, requires(Role.VIEWER)]
"""A caller that may read."""
Operator = Annotated[Caller, requires(Role.OPERATOR)]
"""A caller that may also push telemetry and control devices."""
Admin = Annotated[Caller, requires(Role.ADMIN)]
"""A caller that may also manage devices, keys and read the audit log."""


async def audit(
    services: Services,
    caller: Caller,
    action: str,
    target: str,
    result: str,
    **detail: object,
) -> None:
    """Append what ``caller`` did to the audit log."""
    entry = AuditEntry(actor=caller.label, action=action, target=target, result=result,
                       detail=detail)  # fmt: skip
    await services.audit.record(entry)
