"""``/api/v1/keys`` and ``/api/v1/audit``: API keys and the audit log, for admins only."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from derim.api.auth import Admin, audit
from derim.api.deps import get_services
from derim.api.views import CreatedKey
from derim.security.audit import AuditEntry
from derim.security.keys import ApiKey, Role
from derim.services import Services

router = APIRouter(tags=["admin"])
ServicesDep = Annotated[Services, Depends(get_services)]


class NewKey(BaseModel):
    """A key to create."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[\w .@-]+$")
    role: Role


@router.get("/api/v1/keys")
async def list_keys(services: ServicesDep, caller: Admin) -> list[ApiKey]:
    """Every API key (never a secret), revoked ones included."""
    return await asyncio.to_thread(services.keys.listing)


@router.post("/api/v1/keys", status_code=201)
async def create_key(body: NewKey, services: ServicesDep, caller: Admin) -> CreatedKey:
    """Create a key; its token is in this answer and nowhere else."""
    key, token = await asyncio.to_thread(services.keys.create, body.name, body.role)
    await audit(services, caller, "key.create", key.key_id, "ok", name=key.name, role=key.role)
    return CreatedKey(**key.model_dump(), token=token)


@router.delete("/api/v1/keys/{key_id}")
async def revoke_key(key_id: str, services: ServicesDep, caller: Admin) -> ApiKey:
    """Revoke a key at once; 404 if there is no such live key."""
    key = await asyncio.to_thread(services.keys.revoke, key_id)
    await audit(services, caller, "key.revoke", key_id, "ok", name=key.name)
    return key


@router.get("/api/v1/audit")
async def audit_log(
    services: ServicesDep,
    caller: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, description="Only entries numbered below.")] = None,
    target: Annotated[
        str | None, Query(max_length=128, description="Only this device, key or site.")
    ] = None,
    action: Annotated[str | None, Query(max_length=64, description="Such as control.")] = None,
) -> list[AuditEntry]:
    """Who did what, when, to what, and how it ended, newest first."""
    return await services.audit.entries(limit=limit, before=before, target=target, action=action)
