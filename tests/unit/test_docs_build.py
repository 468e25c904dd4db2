"""The documentation site builds with warnings as errors (`make docs`), generated parts included."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def page_text(site: Path, page: str) -> str:
    """The visible text of a built page (tags dropped, entities decoded)."""
    markup = (site / page / "index.html").read_text(encoding="utf-8")
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def test_mkdocs_strict_build_succeeds_with_routes_and_snippets(tmp_path: Path) -> None:
    """``mkdocs build --strict`` passes; the API page lists the app's routes and the tutorial
    carries the example adapter's code."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    api = page_text(site, "api")
    assert "openapi-routes" not in api
    for route in ("/api/v1/devices/{device_id}", "/api/v1/forecast/{device_id}", "/metrics"):
        assert route in api
    tutorial = page_text(site, "tutorial-new-adapter")
    assert "class JsonHttpAdapter(PollingAdapter)" in tutorial
    assert "--8<--" not in tutorial
