"""Run the real API with uvicorn on an ephemeral loopback port, in a background thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from derim.api.app import create_app
from derim.config import load_settings


class ApiServer:
    """``derim``'s FastAPI app served over real HTTP on 127.0.0.1:<free port>."""

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        # API tests of other features run without keys, explicitly; test_auth.py turns it on.
        settings.setdefault("auth_enabled", False)
        self.settings = load_settings(data_dir=data_dir, **settings)
        self.app = create_app(self.settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_config=None, lifespan="on", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="api-server", daemon=True)
        self.url = ""

    def start(self, timeout_s: float = 20.0) -> ApiServer:
        """Start serving and wait until the port is open."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("API server did not start")
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        """Shut down (runs the app's shutdown, closing storage) and join the thread."""
        self._server.should_exit = True
        self._thread.join(timeout=30)
