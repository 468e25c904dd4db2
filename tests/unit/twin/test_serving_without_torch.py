"""``derim serve`` starts without importing torch: only fitting or loading an LSTM does."""

from __future__ import annotations

import subprocess
import sys


def test_the_api_and_the_cli_import_without_torch() -> None:
    """Importing the app, the services (which hold the twin) and the CLI leaves torch unloaded."""
    code = (
        "import sys, derim.api.app, derim.services, derim.cli, derim.twin.catalogue; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "False"
