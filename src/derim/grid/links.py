"""Starts the grid-facing links the settings ask for, each in its own task, and stops them.

A link's protocol library is imported only when that link is configured, so a server without
grid links neither loads openleadr, dnp3py nor the IEEE 2030.5 schemas (start-up time, RSS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from derim.config import Settings
from derim.errors import ConfigError, DerimError
from derim.grid.fleet import FleetAccess
from derim.tasks import cancel_and_wait

log = logging.getLogger(__name__)


@dataclass
class RunningLink:
    """One link at work: its name, its task, how to close it and the link object itself."""

    name: str
    task: asyncio.Task[None]
    close: Callable[[], Awaitable[None]]
    link: object = None

    @property
    def state(self) -> str:
        """While the task runs, the link's own ``state`` (a str attribute, such as the VEN's
        ``registered``) or else ``running``; once it ended, why (the exception it ended with)."""
        if not self.task.done():
            own = getattr(self.link, "state", None)
            return own if isinstance(own, str) else "running"
        if self.task.cancelled():
            return "stopped"
        exc = self.task.exception()
        return "stopped" if exc is None else f"failed: {exc}"


async def start_links(
    settings: Settings, fleet: FleetAccess, stack: contextlib.AsyncExitStack
) -> list[RunningLink]:
    """Start every configured link; each is closed and its task ended when ``stack`` unwinds.

    Raises ``ConfigError`` when a link cannot start at all (unreadable certificate, the DNP3
    port taken): a server should not run without a grid link it was told to keep.
    """
    links: list[RunningLink] = []
    if settings.openadr is not None:
        from derim.grid.openadr.ven import OpenAdrVen

        logging.getLogger("openleadr").setLevel(logging.WARNING)  # it sets INFO at import
        ven = OpenAdrVen(settings.openadr, fleet)
        links.append(_started(stack, "openadr", ven.run(), ven.aclose, ven))
    if settings.dnp3 is not None:
        from derim.grid.dnp3.outstation import Dnp3Outstation

        outstation = Dnp3Outstation(settings.dnp3, fleet)
        link = _started(stack, "dnp3", outstation.run(), outstation.aclose, outstation)
        links.append(link)
        await outstation.started()
        if link.task.done():
            raise ConfigError(f"dnp3: {link.state}")
    if settings.sep2 is not None:
        from derim.grid.sep2.client import Sep2Link

        try:
            client = Sep2Link(settings.sep2, fleet)
        except DerimError as exc:
            raise ConfigError(f"sep2: {exc}") from exc
        links.append(_started(stack, "sep2", client.run(), client.aclose, client))
    return links


def _started(
    stack: contextlib.AsyncExitStack,
    name: str,
    work: Awaitable[None],
    close: Callable[[], Awaitable[None]],
    link: object,
) -> RunningLink:
    async def run() -> None:
        try:
            await work
        except DerimError as exc:
            log.error("grid link %s stopped: %s", name, exc)
            raise

    task = asyncio.create_task(run(), name=f"derim-{name}")
    stack.push_async_callback(close)
    stack.push_async_callback(cancel_and_wait, task)
    log.info("grid link %s started", name)
    return RunningLink(name, task, close, link)
