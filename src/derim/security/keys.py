"""API keys: each has a role and is stored only as a SHA-256 hash.

A key reads ``derim_<id>_<secret>``: ``id`` names it in lists and the audit log, ``secret``
(32 random bytes, URL-safe base64) is shown once at creation. A 256-bit random secret needs no
slow password hash: SHA-256 of it cannot be inverted or guessed. Keys are looked up in the
database on every request, so a key created or revoked with ``derim keys`` while the server
runs takes effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from derim.errors import NotFoundError, StorageError
from derim.storage.sqlite_file import SQLiteFile

PREFIX = "derim_"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
)
"""


class Role(StrEnum):
    """What a caller may do; each role may also do everything of the roles before it."""

    VIEWER = "viewer"
    """Read devices, telemetry, sessions, commands."""
    OPERATOR = "operator"
    """Also push telemetry and control devices (commands, site limits)."""
    ADMIN = "admin"
    """Also register, change and remove devices (and so their connections), manage keys,
    read the audit log."""

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may."""
        order = list(Role)
        return order.index(self) >= order.index(needed)


class ApiKey(BaseModel):
    """A key as listed: never its secret."""

    key_id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None = None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore(SQLiteFile):
    """API keys in their own SQLite file."""

    schema = _SCHEMA
    label = "the key store"

    def create(self, name: str, role: Role) -> tuple[ApiKey, str]:
        """A new key and its token (shown once, stored only as a hash)."""
        key_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        key = ApiKey(key_id=key_id, name=name, role=role, created_at=datetime.now(UTC))
        self._execute(
            "INSERT INTO api_keys (key_id, name, role, secret_sha256, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (key_id, name, role.value, _digest(secret), key.created_at.isoformat()),
        )
        return key, f"{PREFIX}{key_id}_{secret}"

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key at once; ``NotFoundError`` if there is no such live key."""
        key = next((k for k in self.listing() if k.key_id == key_id and k.revoked_at is None), None)
        if key is None:
            raise NotFoundError("API key", key_id)
        now = datetime.now(UTC)
        self._execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (now.isoformat(), key_id)
        )
        return key.model_copy(update={"revoked_at": now})

    def listing(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        rows = self._rows(
            "SELECT key_id, name, role, created_at, revoked_at FROM api_keys ORDER BY created_at"
        )
        return [
            ApiKey(key_id=r[0], name=r[1], role=Role(r[2]), created_at=r[3], revoked_at=r[4])
            for r in rows
        ]

    def verify(self, token: str) -> ApiKey | None:
        """The live key a token belongs to, or None."""
        if not token.startswith(PREFIX):
            return None
        key_id, _, secret = token[len(PREFIX) :].partition("_")
        rows = self._rows(
            "SELECT key_id, name, role, created_at, secret_sha256 FROM api_keys"
            " WHERE key_id = ? AND revoked_at IS NULL",
            (key_id,),
        )
        if not rows or not hmac.compare_digest(rows[0][4], _digest(secret)):
            return None
        row = rows[0]
        return ApiKey(key_id=row[0], name=row[1], role=Role(row[2]), created_at=row[3])

    def _execute(self, statement: str, params: tuple[object, ...]) -> None:
        with self._lock:
            try:
                self._connection().execute(statement, params)
            except sqlite3.Error as exc:
                raise StorageError(f"key store {self.path}: {exc}") from exc

    def _rows(self, statement: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._connection().execute(statement, params))
            except sqlite3.Error as exc:
                raise StorageError(f"key store {self.path}: {exc}") from exc
