"""A real Mosquitto broker on loopback for the demo, tests and benchmarks: stoppable, restartable,
killable.

Persistence is on (data in ``root/data``): persistent sessions, their subscriptions and queued
QoS 1/2 messages survive ``stop()``/``restart()`` (SIGTERM saves the database) and, up to the
last autosave (every ``autosave_interval_s``), a ``kill()``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from derim.sim.processes import stop_process

READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
FALLBACK_BINARY = "/usr/sbin/mosquitto"
MISSING = (
    "mosquitto is not installed (Debian package `mosquitto`); `make test` installs it "
    "(or run `apt-get install -y mosquitto`)"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def mosquitto_binary() -> str | None:
    """Path of the ``mosquitto`` executable (Debian puts it in /usr/sbin), or None."""
    found = shutil.which("mosquitto")
    if found is None and os.access(FALLBACK_BINARY, os.X_OK):
        found = FALLBACK_BINARY
    return found


class Mosquitto:
    """One ``mosquitto`` process with config, log and data in ``root``; the port stays fixed."""

    host = "127.0.0.1"

    def __init__(
        self,
        root: Path,
        *,
        max_inflight_messages: int = 1000,
        max_queued_messages: int = 2_000_000,
        autosave_interval_s: int = 1,
        password_file: Path | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """``password_file`` (from ``mosquitto_passwd``) turns anonymous access off; ``tls``
        (certificate and key files) makes the listener MQTT over TLS."""
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError(MISSING)
        self.binary = binary
        self.root = root
        self.data_dir = root / "data"
        self.config_path = root / "mosquitto.conf"
        self.log_path = root / "mosquitto.log"
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # As root, mosquitto drops to user `mosquitto` unless told otherwise, and could then not
        # write its database here; as any other user the option has no effect.
        user = pwd.getpwuid(os.geteuid()).pw_name
        self.tls = tls is not None
        access = "allow_anonymous true\n"
        if password_file is not None:
            access = f"allow_anonymous false\npassword_file {password_file}\n"
        if tls is not None:
            access += f"certfile {tls[0]}\nkeyfile {tls[1]}\n"
        self.config_path.write_text(
            f"""listener {self.port} {self.host}
{access}user {user}
persistence true
persistence_location {self.data_dir}/
autosave_interval {autosave_interval_s}
autosave_on_changes false
max_inflight_messages {max_inflight_messages}
max_queued_messages {max_queued_messages}
max_queued_bytes 0
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
log_timestamp_format %Y-%m-%dT%H:%M:%S
"""
        )

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT`` (``mqtts://`` with TLS)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def persistence_file(self) -> Path:
        """The database mosquitto saves on shutdown and at each autosave."""
        return self.data_dir / "mosquitto.db"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the broker and wait until its port accepts connections (at most ~10 s)."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"mosquitto exited at start:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"mosquitto not accepting connections on port {self.port} after {READY_TIMEOUT_S} s:"
            f"\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM (the broker saves its database) and wait; SIGKILL if it does not exit."""
        process, self._process = self._process, None
        stop_process(process, STOP_TIMEOUT_S)

    def restart(self) -> None:
        """Stop gracefully and start again on the same port with the same data."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL, as in a crash: only what the last autosave wrote survives."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the broker logged."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
