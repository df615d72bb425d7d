"""The administrator's per-host limits (destination backpressure) on PostgreSQL."""

from __future__ import annotations

from typing import LiteralString

from ...models import HostLimit
from .base import PgBase

HOST_LIMIT_LIST: LiteralString = (
    "SELECT host, max_concurrency, max_rate, updated_at FROM host_limit ORDER BY host"
)
HOST_LIMIT_SAVE: LiteralString = (
    "INSERT INTO host_limit (host, max_concurrency, max_rate, updated_at) "
    "VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (host) DO UPDATE SET max_concurrency = excluded.max_concurrency, "
    "max_rate = excluded.max_rate, updated_at = excluded.updated_at"
)
HOST_LIMIT_DELETE: LiteralString = "DELETE FROM host_limit WHERE host = %s RETURNING host"


class PgHostLimitOps(PgBase):
    async def list_host_limits(self) -> list[HostLimit]:
        rows = await self._read(HOST_LIMIT_LIST, ())
        return [HostLimit(row[0], row[1], row[2], int(row[3])) for row in rows]

    async def save_host_limit(self, limit: HostLimit) -> None:
        params = (limit.host, limit.max_concurrency, limit.max_rate, limit.updated_at_ms)
        await self._write_one_no_rows(HOST_LIMIT_SAVE, params)

    async def delete_host_limit(self, host: str) -> bool:
        return bool(await self._write_one(HOST_LIMIT_DELETE, (host,)))
