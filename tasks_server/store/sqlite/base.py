"""What every group of store operations shares: the writer and the reader
connection, and the codecs that seal and open stored values."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, LiteralString, TypeVar

import aiosqlite
from pydantic import TypeAdapter

from ...models import (
    Task,
    TaskSpec,
    TaskState,
)
from ...sealing import Sealer
from ..migrate import migrate
from .connection import connect
from .writer import CommitObserver, Writer

logger = logging.getLogger(__name__)
T = TypeVar("T")

SPEC = TypeAdapter(TaskSpec)
METADATA = TypeAdapter(tuple[tuple[str, str], ...])


class StoreBase:
    """Lifecycle, the two connections and the codecs; the operation groups subclass it."""

    def __init__(
        self,
        path: Path,
        sealer: Sealer,
        synchronous: str = "FULL",
        on_commit: CommitObserver | None = None,
    ) -> None:
        self.path = path
        self._sealer = sealer
        self._synchronous = synchronous
        self._on_commit = on_commit
        self._writer: Writer | None = None
        self._reader: aiosqlite.Connection | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path, self._synchronous)
        migrate(conn)
        self._writer = Writer(conn, self._on_commit)
        self._writer.start()
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader.execute("PRAGMA foreign_keys = ON")
        await self._reader.execute("PRAGMA busy_timeout = 30000")

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    @property
    def commits(self) -> int:
        return self._writer.commits if self._writer else 0

    async def _write(self, op: Callable[[sqlite3.Connection], T], savepoint: bool = False) -> T:
        """Run ``op`` in the next write batch; ``savepoint`` for ops with several writes."""
        assert self._writer is not None, "store is not open"
        result: T = await self._writer.submit(op, savepoint)
        return result

    async def _read(self, sql: LiteralString, params: Sequence[Any]) -> list[Any]:
        assert self._reader is not None, "store is not open"
        return list(await self._reader.execute_fetchall(sql, params))

    # -- codecs -----------------------------------------------------------------------

    def _seal_spec(self, spec: TaskSpec) -> bytes:
        return self._sealer.seal(SPEC.dump_json(spec, exclude_defaults=True))

    def _open_spec(self, blob: bytes) -> TaskSpec:
        return SPEC.validate_json(self._sealer.open(blob))

    def _seal(self, value: bytes | None) -> bytes | None:
        return None if value is None else self._sealer.seal(value)

    def _open(self, value: bytes | None) -> bytes | None:
        return None if value is None else self._sealer.open(value)

    def _task(self, row: Sequence[Any]) -> Task:
        metadata = self._open(row[8])
        return Task(
            id=row[0],
            owner_id=row[1],
            state=TaskState(row[2]),
            created_at_ms=row[3],
            status_code=row[4],
            estimate_end_at_ms=row[5],
            estimate_execution_at_ms=row[6],
            response=self._open(row[7]),
            metadata=None if metadata is None else METADATA.validate_json(metadata),
            attempts=row[9],
            retry_count=row[10],
            due_at_ms=row[11],
        )
