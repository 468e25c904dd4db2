"""Fixtures for browser tests: Debian's Chromium driven by Playwright, one page per test.

The API under test is the integration tests' ``ApiServer`` (real HTTP on a free loopback port),
imported from ``tests/integration``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, ViewportSize, async_playwright, expect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = ViewportSize(width=1280, height=860)
MISSING_CHROMIUM = "Chromium is not installed (Debian package `chromium`); `make test` installs it"

expect.set_options(timeout=15_000)  # a bound for a loaded machine, not a timing assertion


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary; the test fails, saying what to install, when there is none."""
    if not CHROMIUM.exists():
        pytest.fail(MISSING_CHROMIUM, pytrace=False)
    return str(CHROMIUM)


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    """Headless Chromium for one test."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh laptop-sized page (empty localStorage); fails the test on any uncaught script
    error."""
    context = await browser.new_context(viewport=LAPTOP)
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        await context.close()
    assert not errors, f"uncaught script errors: {errors}"
