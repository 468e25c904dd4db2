"""``/api/v1/sites``: power limits shared by a group of chargers (a site)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from derim.adapters.ocpp.site import SiteBalancer
from derim.adapters.ocpp.views import SiteView
from derim.api.auth import Operator, Viewer, audit
from derim.api.deps import get_services
from derim.errors import InvalidRequestError
from derim.services import Services

router = APIRouter(prefix="/api/v1/sites", tags=["sites"])
ServicesDep = Annotated[Services, Depends(get_services)]
SiteName = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[\w.:@-]+$", description="A device group.")
]


class SiteLimit(BaseModel):
    """The power a site's chargers may draw together, kW."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    limit_kw: float = Field(ge=0, le=1_000_000)


def _balancer(services: Services) -> SiteBalancer:
    if services.sites is None:
        raise InvalidRequestError("site", "the OCPP central system is disabled (ocpp_enabled)")
    return services.sites


@router.get("")
async def list_sites(services: ServicesDep, caller: Viewer) -> list[SiteView]:
    """Every site that has a limit, with its current split across running sessions."""
    return _balancer(services).sites()


@router.get("/{site}")
async def get_site(site: SiteName, services: ServicesDep, caller: Viewer) -> SiteView:
    """A site's limit (null when none) and its split: each session's share and its charger's
    answer."""
    return _balancer(services).view(site)


@router.put("/{site}/limit")
async def set_site_limit(
    site: SiteName, body: SiteLimit, services: ServicesDep, caller: Operator
) -> SiteView:
    """Limit the group's chargers to ``limit_kw`` together; the split is sent before the reply
    and redone whenever one of their sessions starts or stops."""
    view = await _balancer(services).set_limit(site, body.limit_kw)
    await audit(services, caller, "site.limit", site, "ok", limit_kw=body.limit_kw)
    return view


@router.delete("/{site}/limit")
async def clear_site_limit(site: SiteName, services: ServicesDep, caller: Operator) -> SiteView:
    """Remove the site's limit and the shares its chargers hold."""
    view = await _balancer(services).set_limit(site, None)
    await audit(services, caller, "site.limit", site, "ok", limit_kw=None)
    return view
