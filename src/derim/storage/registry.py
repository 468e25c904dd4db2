"""The device registry: devices persisted as JSON documents in SQLite, cached in memory."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from derim.errors import ConflictError, NotFoundError, StorageError
from derim.models.device import DERDevice, DevicePatch, OcppConnection, apply_patch


class DeviceRegistry:
    """Create, read, update and delete devices; reads are served from memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._devices: dict[str, DERDevice] = {}
        self._chargers: dict[str, str] = {}

    async def open(self) -> None:
        """Open the database and load every device."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("CREATE TABLE IF NOT EXISTS devices (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
        for (body,) in conn.execute("SELECT body FROM devices"):
            self._remember(DERDevice.model_validate_json(body))
        self._conn = conn

    async def close(self) -> None:
        """Close the database."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)

    def get(self, device_id: str) -> DERDevice:
        """The device with ``device_id``; raises ``NotFoundError``."""
        try:
            return self._devices[device_id]
        except KeyError:
            raise NotFoundError("device", device_id) from None

    def find(self, device_id: str) -> DERDevice | None:
        """The device with ``device_id``, or None."""
        return self._devices.get(device_id)

    def find_charger(self, charge_point_id: str) -> DERDevice | None:
        """The device whose OCPP connection has ``charge_point_id``, or None."""
        device_id = self._chargers.get(charge_point_id)
        return None if device_id is None else self._devices.get(device_id)

    def list(self) -> list[DERDevice]:
        """Every device, ordered by id."""
        return [self._devices[k] for k in sorted(self._devices)]

    async def add(self, device: DERDevice) -> DERDevice:
        """Register a new device; raises ``ConflictError`` if the id is taken."""
        if device.id in self._devices:
            raise ConflictError(f"device {device.id!r} already exists")
        if device.created_at is None:
            device = device.model_copy(update={"created_at": datetime.now(UTC)})
        await self._save(device)
        return device

    async def upsert(self, device: DERDevice) -> DERDevice:
        """Register or replace a device (fleet files at start), keeping its creation time."""
        existing = self._devices.get(device.id)
        created = existing.created_at if existing else device.created_at
        device = device.model_copy(update={"created_at": created or datetime.now(UTC)})
        await self._save(device)
        return device

    async def update(self, device_id: str, patch: DevicePatch) -> DERDevice:
        """Apply a partial update; raises ``NotFoundError``."""
        device = apply_patch(self.get(device_id), patch)
        await self._save(device)
        return device

    async def remove(self, device_id: str) -> None:
        """Forget a device; raises ``NotFoundError``."""
        self.get(device_id)
        await asyncio.to_thread(self._execute, "DELETE FROM devices WHERE id = ?", (device_id,))
        self._forget(device_id)

    async def _save(self, device: DERDevice) -> None:
        await asyncio.to_thread(
            self._execute,
            "INSERT OR REPLACE INTO devices (id, body) VALUES (?, ?)",
            (device.id, device.model_dump_json()),
        )
        self._forget(device.id)
        self._remember(device)

    def _remember(self, device: DERDevice) -> None:
        self._devices[device.id] = device
        if isinstance(device.connection, OcppConnection):
            self._chargers[device.connection.charge_point_id] = device.id

    def _forget(self, device_id: str) -> None:
        device = self._devices.pop(device_id, None)
        if device is not None and isinstance(device.connection, OcppConnection):
            self._chargers.pop(device.connection.charge_point_id, None)

    def _execute(self, statement: str, params: tuple[str, ...]) -> None:
        if self._conn is None:
            raise StorageError("device registry is not open")
        with self._lock:
            try:
                self._conn.execute(statement, params)
            except sqlite3.Error as exc:
                raise StorageError(f"device registry {self.path}: {exc}") from exc
