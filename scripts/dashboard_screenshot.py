"""Screenshot the dashboard of a running DERIM (for docs/): ``python scripts/dashboard_screenshot.py
http://127.0.0.1:8000 docs/dashboard.png [device]`` with Debian's Chromium through Playwright."""

from __future__ import annotations

import sys

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> None:
    """Open the dashboard, select a device, wait for its chart, save a screenshot."""
    url, out = sys.argv[1], sys.argv[2]
    device = sys.argv[3] if len(sys.argv) > 3 else "pv-roof-2"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(url)
        page.get_by_text(device, exact=True).first.click()
        page.wait_for_timeout(4000)
        page.screenshot(path=out, full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
