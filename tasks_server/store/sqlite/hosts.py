"""The administrator's per-host limits (destination backpressure)."""

from __future__ import annotations

import sqlite3
from typing import LiteralString

from ...models import HostLimit
from .base import StoreBase

HOST_LIMIT_LIST: LiteralString = (
    "SELECT host, max_concurrency, max_rate, updated_at FROM host_limit ORDER BY host"
)
HOST_LIMIT_SAVE: LiteralString = (
    "INSERT INTO host_limit (host, max_concurrency, max_rate, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (host) DO UPDATE SET max_concurrency = excluded.max_concurrency, "
    "max_rate = excluded.max_rate, updated_at = excluded.updated_at"
)
HOST_LIMIT_DELETE: LiteralString = "DELETE FROM host_limit WHERE host = ?"


class HostLimitOps(StoreBase):
    async def list_host_limits(self) -> list[HostLimit]:
        rows = await self._read(HOST_LIMIT_LIST, ())
        return [HostLimit(row[0], row[1], row[2], row[3]) for row in rows]

    async def save_host_limit(self, limit: HostLimit) -> None:
        params = (limit.host, limit.max_concurrency, limit.max_rate, limit.updated_at_ms)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(HOST_LIMIT_SAVE, params)

        await self._write(op)

    async def delete_host_limit(self, host: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(HOST_LIMIT_DELETE, (host,)).rowcount > 0

        return await self._write(op)
