"""Site power limits: a group of chargers shares one limit, split across its running sessions.

A site is a device group (``DERDevice.groups``) with a limit in kW. The limit is split equally
across the running sessions of the site's chargers, no session getting more than its charger's
rating (what one cannot use goes to the others), and each share is sent as a TxProfile at the
site's stack level. The split is redone whenever a session of the site starts or stops and
whenever the limit changes; a share that did not change is not sent again. A session that
starts draws at most its charger's other limits until its share arrives (one round trip).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime

from ocpp.exceptions import OCPPError

from derim.adapters.ocpp.central import CentralSystem
from derim.adapters.ocpp.commands import (
    Limit,
    Purpose,
    charging_profile,
    clear_profile,
    set_profile,
)
from derim.adapters.ocpp.views import Share, SiteView
from derim.errors import TransportError
from derim.models.session import ChargingSession
from derim.tasks import cancel_and_wait

log = logging.getLogger(__name__)
RETRY_AFTER_S = 0.5


def split(limit_kw: float, caps_kw: Sequence[float | None]) -> list[float]:
    """Equal shares of ``limit_kw`` (kW), none above its cap (None: uncapped), the surplus of
    capped shares going to the others."""
    shares = [0.0] * len(caps_kw)
    remaining = limit_kw
    uncapped = [math.inf if cap is None else cap for cap in caps_kw]
    order = sorted(range(len(caps_kw)), key=uncapped.__getitem__)
    for place, index in enumerate(order):
        fair = remaining / (len(order) - place)
        shares[index] = min(uncapped[index], fair)
        remaining -= shares[index]
    return shares


class SiteBalancer:
    """Keeps every site's split current; re-splits in the background when sessions change."""

    def __init__(self, central: CentralSystem) -> None:
        self.central = central
        self._views: dict[str, SiteView] = {}
        self._sent: dict[tuple[str, str], float] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()

    def sessions_changed(self, device_id: str) -> None:
        """Re-split each limited site that ``device_id`` belongs to (in the background)."""
        device = self.central.registry.find(device_id)
        limits = self.central.sessions.site_limits()
        for site in device.groups if device is not None else ():
            if site in limits:
                self._schedule(site)

    def view(self, site: str) -> SiteView:
        """The site's limit and latest split."""
        limit = self.central.sessions.site_limits().get(site)
        known = self._views.get(site)
        if known is None or known.limit_kw != limit:
            return SiteView(site=site, limit_kw=limit, allocated_kw=0.0, shares=[])
        return known

    def sites(self) -> list[SiteView]:
        """Every site that has a limit."""
        return [self.view(site) for site in sorted(self.central.sessions.site_limits())]

    async def set_limit(self, site: str, limit_kw: float | None) -> SiteView:
        """Set (None: remove) a site's limit, kW, and apply the new split before returning."""
        await self.central.sessions.set_site_limit(site, limit_kw)
        running = self._tasks.get(site)
        if running is not None:
            await cancel_and_wait(running)
        await self.apply(site)
        return self.view(site)

    async def aclose(self) -> None:
        """Stop background re-splits."""
        for task in list(self._tasks.values()):
            await cancel_and_wait(task)

    def _schedule(self, site: str) -> None:
        if site in self._tasks:
            self._again.add(site)
            return
        task = asyncio.create_task(self._resplit(site), name=f"derim-site-{site}")
        self._tasks[site] = task
        task.add_done_callback(lambda _: self._tasks.pop(site, None))

    async def _resplit(self, site: str) -> None:
        while True:
            self._again.discard(site)
            try:
                await self.apply(site)
            except Exception:  # a bug must not end re-splitting for good; it is logged
                log.exception("site %s: re-split failed", site)
            if site not in self._again:
                return

    async def apply(self, site: str) -> None:
        """Split the site's limit across its running sessions and send the changed shares."""
        limit = self.central.sessions.site_limits().get(site)
        sessions = self._sessions(site)
        store = self.central.sessions
        for key in [k for k in self._sent if store.find_active(*k) is None]:
            del self._sent[key]
        if limit is None:
            await asyncio.gather(*(self._clear(s) for s in sessions))
            self._views.pop(site, None)
            return
        caps = [self._rating(s.device_id) for s in sessions]
        shares = split(limit, caps)
        answers = await asyncio.gather(
            *(self._send(s, kw) for s, kw in zip(sessions, shares, strict=True))
        )
        self._views[site] = SiteView(
            site=site,
            limit_kw=limit,
            allocated_kw=round(sum(shares), 3),
            shares=[
                Share(
                    device_id=s.device_id,
                    connector_id=s.connector_id,
                    transaction_id=s.transaction_id,
                    limit_kw=round(kw, 3),
                    answer=answer,
                )
                for s, kw, answer in zip(sessions, shares, answers, strict=True)
            ],
            updated_at=datetime.now(UTC),
        )

    def _sessions(self, site: str) -> list[ChargingSession]:
        registry, sessions = self.central.registry, self.central.sessions
        members = [d.id for d in registry.list() if site in d.groups and d.protocol == "ocpp"]
        return [s for device_id in members for s in sessions.active(device_id)]

    def _rating(self, device_id: str) -> float | None:
        device = self.central.registry.find(device_id)
        return None if device is None else device.rated_power_kw

    async def _send(self, session: ChargingSession, limit_kw: float) -> str:
        """Install one session's share; the charger's answer in a word.

        A charger may refuse a TxProfile for a transaction whose start it is still finishing
        (it learns the 1.6 transaction id from the answer DERIM just sent), so a refusal is
        asked again once, ``RETRY_AFTER_S`` later.
        """
        key = (session.device_id, session.transaction_id)
        if self._sent.get(key) == round(limit_kw, 3):
            return "Accepted"
        status = await self._offer(session, limit_kw)
        if status == "Rejected":
            await asyncio.sleep(RETRY_AFTER_S)
            status = await self._offer(session, limit_kw)
        if status == "Accepted":
            self._sent[key] = round(limit_kw, 3)
        else:
            log.warning("charger %s refused its site share: %s", session.device_id, status)
        return status

    async def _offer(self, session: ChargingSession, limit_kw: float) -> str:
        """One SetChargingProfile with the session's share; the answer in a word."""
        try:
            link = self.central.link(session.device_id)
            profile = charging_profile(
                link.version,
                Purpose.SITE,
                session.connector_id,
                Limit(limit_kw * 1000, "W"),
                session.transaction_id,
            )
            answer = await self.central.call(
                link, set_profile(link.version, session.connector_id, profile)
            )
        except TransportError:
            return "offline"
        except TimeoutError:
            return "timeout"
        except OCPPError as exc:
            return str(exc.code)
        return str(answer.get("status"))

    async def _clear(self, session: ChargingSession) -> None:
        """Remove a session's share after its site lost its limit."""
        self._sent.pop((session.device_id, session.transaction_id), None)
        try:
            link = self.central.link(session.device_id)
            await self.central.call(
                link, clear_profile(link.version, Purpose.SITE, session.connector_id)
            )
        except (TransportError, TimeoutError, OCPPError) as exc:
            log.warning("could not clear the site share of %s: %s", session.device_id, exc)
