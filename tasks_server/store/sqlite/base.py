"""What every group of store operations shares: the writer and the reader
connection, and the codecs that seal and open stored values."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, LiteralString, TypeVar

import aiosqlite
from pydantic import TypeAdapter
from pydantic_core import to_json

from ...errors import StorageUnavailable
from ...models import (
    HttpRequest,
    Task,
    TaskConfig,
    TaskSpec,
    TaskState,
)
from ...sealing import Sealer
from ..migrate import migrate
from .connection import DEFAULT_BUSY_TIMEOUT_MS, connect
from .sealed import reseal, verify_key
from .writer import CommitObserver, Outcome, Together, Writer, transient_reason

T = TypeVar("T")

SPEC = TypeAdapter(TaskSpec)
_REQUEST = TypeAdapter(HttpRequest)
_CONFIG = TypeAdapter(TaskConfig)
_CONFIG_JSON_KEPT = 1024
METADATA = TypeAdapter(tuple[tuple[str, str], ...])


def request_json(request: HttpRequest) -> bytes:
    """``_REQUEST.dump_json(request, exclude_defaults=True)``. Most requests give only a
    URL, a method, a body and a transport: theirs is written from a dict of those, five
    times faster than pydantic's walk over all 14 fields and their defaults."""
    r = request
    if (
        r.query
        or r.headers
        or r.form is not None
        or r.cookie_file is not None
        or r.cookies is not None
        or r.auth_basic is not None
        or r.auth_digest is not None
        or r.auth_ntlm is not None
        or r.auth_aws_sigv4 is not None
    ):
        return _REQUEST.dump_json(r, exclude_defaults=True)
    given: dict[str, str] = {"url": r.url, "method": r.method}  # in the fields' order
    if r.data_text is not None:
        given["data_text"] = r.data_text
    if r.data_json is not None:
        given["data_json"] = r.data_json
    if r.transport is not None:
        given["transport"] = r.transport
    return to_json(given)


# the task columns every query that returns tasks selects; StoreBase._task reads them by name
TASK_FIELDS: tuple[LiteralString, ...] = (
    "id",
    "owner_id",
    "state",
    "created_at",
    "status_code",
    "estimate_end_at",
    "estimate_execution_at",
    "response",
    "metadata",
    "attempts",
    "retry_count",
    "due_at",
    "response_truncated",
)
TASK_COLUMNS: LiteralString = ", ".join(TASK_FIELDS)


class StoreBase:
    """Lifecycle, the two connections and the codecs; the operation groups subclass it."""

    def __init__(
        self,
        path: Path,
        sealer: Sealer,
        synchronous: str = "FULL",
        on_commit: CommitObserver | None = None,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        keep_attempts: int = 0,
        shared: bool = False,
    ) -> None:
        self.path = path
        # other processes write to the file too (API_PROCESSES): writers take turns
        self._shared = shared
        # attempts kept per task: the first and the last N (0: all); the rest are counted
        self._keep_attempts = keep_attempts
        self._busy_timeout_ms = busy_timeout_ms
        self._sealer = sealer
        self._synchronous = synchronous
        self._on_commit = on_commit
        self._writer: Writer | None = None
        self._reader: aiosqlite.Connection | None = None
        # long reads (the dashboard's counts over every task) run on a connection of their
        # own: the short reads of the API and the scheduler never queue behind them, and
        # WAL lets both connections read at once
        self._scanner: aiosqlite.Connection | None = None
        # id(config) → (config, its JSON): see spec_json
        self._config_json: dict[int, tuple[TaskConfig, bytes]] = {}

    # -- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path, self._synchronous, self._busy_timeout_ms)
        try:
            migrate(conn)
            verify_key(conn, self._sealer, self.path)
        except BaseException:
            conn.close()
            raise
        turns = self.path.with_name(f"{self.path.name}.write.lock") if self._shared else None
        self._writer = Writer(conn, self._on_commit, turns)
        self._writer.start()
        self._reader = await self._read_connection()
        self._scanner = await self._read_connection()

    async def _read_connection(self) -> aiosqlite.Connection:
        reader = await aiosqlite.connect(
            self.path, isolation_level=None, timeout=self._busy_timeout_ms / 1000
        )
        await reader.execute("PRAGMA foreign_keys = ON")
        return reader

    async def reseal(self, sealer: Sealer) -> int:
        old = self._sealer

        def op(conn: sqlite3.Connection) -> int:
            return reseal(conn, old, sealer)

        written = await self._write(op, savepoint=True)
        self._sealer = sealer
        return written

    async def close(self) -> None:
        """Close every connection; the readers are closed even when the writer's close
        fails (aiosqlite's threads would otherwise keep the process alive)."""
        writer, self._writer = self._writer, None
        readers = (self._reader, self._scanner)
        self._reader = self._scanner = None
        try:
            if writer is not None:
                await writer.close()
        finally:
            for reader in readers:
                if reader is not None:
                    await reader.close()

    def write_problem(self) -> str | None:
        if self._writer is None:
            return "the store is not open"
        return self._writer.health.problem(time.monotonic())

    async def set_page_limit(self, pages: int) -> int:
        """Cap the database file at ``pages`` pages (SQLite's ``max_page_count``) on the
        writer's connection; returns the cap now in force. Writes that need more space
        fail as when the disk is full: this is how the tests fill the disk."""
        assert self._writer is not None, "store is not open"

        def limit(conn: sqlite3.Connection) -> int:
            row = conn.execute(f"PRAGMA max_page_count = {int(pages)}").fetchone()
            return int(row[0])

        pages_now: int = await self._writer.run_outside_batch(limit)
        return pages_now

    async def page_count(self) -> int:
        rows = await self._read("PRAGMA page_count", ())
        return int(rows[0][0])

    @property
    def commits(self) -> int:
        return self._writer.commits if self._writer else 0

    async def _write(self, op: Callable[[sqlite3.Connection], T], savepoint: bool = False) -> T:
        """Run ``op`` in the next write batch; ``savepoint`` for ops with several writes."""
        assert self._writer is not None, "store is not open"
        result: T = await self._writer.submit(op, savepoint)
        return result

    async def _write_together(
        self, run: Callable[[sqlite3.Connection, list[Any]], list[Outcome]], payload: Any
    ) -> Any:
        """Run ``payload`` in the next write batch with the like payloads queued beside it
        (see ``writer.Together``)."""
        assert self._writer is not None, "store is not open"
        return await self._writer.submit(Together(run, payload))

    async def _read(self, sql: LiteralString, params: Sequence[Any]) -> list[Any]:
        assert self._reader is not None, "store is not open"
        return await self._fetch(self._reader, sql, params)

    async def _scan(self, sql: LiteralString, params: Sequence[Any]) -> list[Any]:
        """A read over many rows, on the long reads' connection."""
        assert self._scanner is not None, "store is not open"
        return await self._fetch(self._scanner, sql, params)

    async def _fetch(
        self, conn: aiosqlite.Connection, sql: LiteralString, params: Sequence[Any]
    ) -> list[Any]:
        try:
            return list(await conn.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            reason = transient_reason(exc)
            if reason is None:
                raise
            raise StorageUnavailable(f"{reason}: {exc}") from exc

    # -- codecs -----------------------------------------------------------------------

    def _seal_spec(self, spec: TaskSpec) -> bytes:
        return self._sealer.seal(self._spec_json(spec))

    def _spec_json(self, spec: TaskSpec) -> bytes:
        """``SPEC.dump_json(spec, exclude_defaults=True)``, with the configuration's part
        remembered by identity: registrations mostly share one TaskConfig object
        (api/convert.remembered_config), and its 60 fields are most of the work."""
        if spec.metadata is not None or spec.on_success is not None or spec.on_failure:
            return SPEC.dump_json(spec, exclude_defaults=True)
        config = spec.config
        seen = self._config_json.get(id(config))
        if seen is None or seen[0] is not config:
            if len(self._config_json) >= _CONFIG_JSON_KEPT:
                self._config_json.clear()
            seen = self._config_json[id(config)] = (
                config,
                _CONFIG.dump_json(config, exclude_defaults=True),
            )
        request = request_json(spec.request)
        return b'{"request":' + request + b',"config":' + seen[1] + b"}"

    def _open_spec(self, blob: bytes) -> TaskSpec:
        return SPEC.validate_json(self._sealer.open(blob))

    def _seal(self, value: bytes | None) -> bytes | None:
        return None if value is None else self._sealer.seal(value)

    def _open(self, value: bytes | None) -> bytes | None:
        return None if value is None else self._sealer.open(value)

    def _task(self, row: Sequence[Any]) -> Task:
        """A Task from a row of ``TASK_COLUMNS``."""
        c = dict(zip(TASK_FIELDS, row, strict=True))
        metadata = self._open(c["metadata"])
        return Task(
            id=c["id"],
            owner_id=c["owner_id"],
            state=TaskState(c["state"]),
            created_at_ms=c["created_at"],
            status_code=c["status_code"],
            estimate_end_at_ms=c["estimate_end_at"],
            estimate_execution_at_ms=c["estimate_execution_at"],
            response=self._open(c["response"]),
            metadata=None if metadata is None else METADATA.validate_json(metadata),
            attempts=c["attempts"],
            retry_count=c["retry_count"],
            due_at_ms=c["due_at"],
            response_truncated=bool(c["response_truncated"]),
        )
