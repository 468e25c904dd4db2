"""A real InfluxDB 1.x server on loopback for integration tests, stoppable and restartable."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

from derim.sim.processes import stop_process

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
MISSING = (
    "influxd is not installed (Debian package `influxdb`); `make test` installs it "
    "(or run `apt-get install -y influxdb`)"
)


def influxd_binary() -> str | None:
    """Path of the ``influxd`` executable, or None when it is not installed."""
    return shutil.which("influxd")


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


class InfluxServer:
    """One ``influxd`` process with its data in ``root``; ports stay fixed across restarts."""

    def __init__(self, root: Path) -> None:
        binary = influxd_binary()
        if binary is None:
            raise RuntimeError(MISSING)
        self.binary = binary
        self.root = root
        self.http_port, self.rpc_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config_path = root / "influxdb.conf"
        self.log_path = root / "influxd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"

[meta]
  dir = "{self.root / "meta"}"
  logging-enabled = false

[data]
  dir = "{self.root / "data"}"
  wal-dir = "{self.root / "wal"}"
  query-log-enabled = false

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false
  log-enabled = false

[http]
  bind-address = "127.0.0.1:{self.http_port}"
  log-enabled = false
  pprof-enabled = false

[logging]
  level = "error"
  suppress-logo = true
"""
        )

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until ``/ping`` answers 204 (at most ~20 s)."""
        if self.running:
            return
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [self.binary, "run", "-config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"influxd exited at start:\n{self._log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/ping", timeout=1.0).status_code == 204:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"influxd not ready after {READY_TIMEOUT_S} s:\n{self._log_tail()}")

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit in time); data stays in ``root``."""
        process, self._process = self._process, None
        stop_process(process, STOP_TIMEOUT_S)

    def _log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
