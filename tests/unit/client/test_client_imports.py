"""The client imports light: neither the ocpp library nor the numeric stack is loaded by it."""

from __future__ import annotations

import subprocess
import sys


def test_the_client_and_its_twin_models_import_without_ocpp_or_pandas() -> None:
    """Importing ``derim.client`` and its twin models leaves ocpp, pandas and NumPy unloaded."""
    code = (
        "import sys, derim.client, derim.client.twin_models; "
        "print(sorted(m for m in ('ocpp', 'pandas', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
