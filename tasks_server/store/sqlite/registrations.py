"""Registrations: one task, or a batch in one transaction, with deduplication, the
owner's queue limit and flow-control keys; and their SQL."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from typing import Any, LiteralString, NamedTuple

from ...errors import OwnerNotFound, QueueLimitReached, TasksServerError
from ...models import FlowControl, NewTask, Task
from ..ids import new_task_ids
from ..listing import host_of
from .base import METADATA, TASK_COLUMNS, StoreBase
from .owners import OWNER_CAPACITY
from .writer import Outcome

# a registration: with its priority, deduplication id and flow-control key
_REGISTER_INTO: LiteralString = (
    "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
    "next_at, metadata, spec, priority, dedup_key, dedup_until, flow_key, host) VALUES "
)
_REGISTER_ROW: LiteralString = "(?, ?, 'RUNNING', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
TASK_REGISTER: LiteralString = _REGISTER_INTO + _REGISTER_ROW
# Many registrations at once: one statement of 2**k rows each (at most 512 rows, 6,656
# placeholders: below SQLite's default limit of 32,766). One statement is one SQLite step,
# so the writer lets go of the GIL once per statement instead of once per row.
_MANY_ROWS = 512
REGISTER_ROWS: dict[int, LiteralString] = {
    2**k: _REGISTER_INTO + ", ".join([_REGISTER_ROW] * 2**k) for k in range(10)
}
# Many plain registrations of one owner at one time (a batch's items without a
# deduplication id or a flow-control key): the owner and the time are bound once per
# statement, and each row binds only what differs, 6 values instead of 13. Binding holds
# the GIL, so the event loop waits meanwhile; SQLite's own work lets go of it.
_OWNER_ROWS_INTO: LiteralString = (
    "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
    "next_at, metadata, spec, priority, dedup_key, dedup_until, flow_key, host) "
    "SELECT column1, ?, 'RUNNING', ?, column2, column2, column2, column3, column4, "
    "column5, NULL, NULL, NULL, column6 FROM (VALUES "
)
_OWNER_ROW: LiteralString = "(?, ?, ?, ?, ?, ?)"
OWNER_ROWS: dict[int, LiteralString] = {
    2**k: _OWNER_ROWS_INTO + ", ".join([_OWNER_ROW] * 2**k) + ")" for k in range(10)
}
# an OWNER_ROWS row from TASK_REGISTER's parameters: id, due, metadata, spec, priority, host
_OWNER_ROW_OF = itemgetter(0, 3, 6, 7, 8, 12)
TASK_BY_DEDUP: LiteralString = (
    f"SELECT {TASK_COLUMNS}, dedup_until FROM task WHERE owner_id = ? AND dedup_key = ?"
)
TASK_DEDUP_EXPIRE: LiteralString = (
    "UPDATE task SET dedup_key = NULL, dedup_until = NULL WHERE owner_id = ? AND dedup_key = ?"
)
# the last registration naming a key sets its limits (as QStash does)
FLOW_UPSERT: LiteralString = (
    "INSERT INTO flow_control (owner_id, key, rate, period_ms, parallelism, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (owner_id, key) DO UPDATE SET "
    "rate = excluded.rate, period_ms = excluded.period_ms, "
    "parallelism = excluded.parallelism, updated_at = excluded.updated_at"
)


def _check_room(tasks: int, limit: int) -> None:
    if limit and tasks >= limit:
        raise QueueLimitReached(limit)


def insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert registration rows (TASK_REGISTER's parameters) with REGISTER_ROWS statements:
    the largest that fit, then smaller ones for the rest."""
    start = 0
    while start < len(rows):
        size = min(_MANY_ROWS, 1 << ((len(rows) - start).bit_length() - 1))
        chunk = rows[start : start + size]  # flattened in C: this thread holds the GIL
        conn.execute(REGISTER_ROWS[size], list(chain.from_iterable(chunk)))
        start += size


def insert_owner_rows(
    conn: sqlite3.Connection, owner_id: str, now_ms: int, rows: list[tuple[Any, ...]]
) -> None:
    """Insert plain registration rows (TASK_REGISTER's parameters) of ``owner_id``, all
    registered at ``now_ms``, with OWNER_ROWS statements, as ``insert_rows`` does."""
    start = 0
    while start < len(rows):
        size = min(_MANY_ROWS, 1 << ((len(rows) - start).bit_length() - 1))
        chunk = rows[start : start + size]
        values = chain.from_iterable(map(_OWNER_ROW_OF, chunk))  # in C, as above
        conn.execute(OWNER_ROWS[size], [owner_id, now_ms, *values])
        start += size


class _Registration(NamedTuple):
    """One registration ready for the writer: its row (sealed outside the writer thread)
    and what the writer does besides inserting it. (A named tuple: made once per item of
    a batch, several times faster than a frozen dataclass.)"""

    params: tuple[Any, ...]  # TASK_REGISTER's
    task: Task  # what the caller gets once the row is written
    dedup_key: str | None
    flow: FlowControl | None

    @property
    def is_plain(self) -> bool:
        """One INSERT and nothing else (no key to look up, no limits to record)."""
        return self.dedup_key is None and self.flow is None


class RegistrationOps(StoreBase):
    """The registrations of SqliteStore."""

    async def create_task(self, owner_id: str, new: NewTask, now_ms: int) -> Task:
        item = self._registration(owner_id, new, now_ms)
        if item.is_plain:  # written with the plain registrations queued beside it
            task: Task = await self._write_together(self._register_plain, item)
            return task

        def op(conn: sqlite3.Connection) -> Task:
            tasks, limit = self._capacity(conn, owner_id)
            return self._register_one(conn, owner_id, item, now_ms, tasks, limit)[0]

        return await self._write(op, savepoint=True)

    def _register_plain(
        self, conn: sqlite3.Connection, items: list[_Registration]
    ) -> list[Outcome]:
        """Plain registrations of any owners, in order; each owner's queue limit counted
        from one read of its row."""
        capacity: dict[str, tuple[int, int]] = {}
        outcomes: list[Outcome] = []
        rows = []
        for item in items:
            owner_id = item.task.owner_id
            try:
                if owner_id not in capacity:
                    capacity[owner_id] = self._capacity(conn, owner_id)
                tasks, limit = capacity[owner_id]
                _check_room(tasks, limit)
            except TasksServerError as exc:
                outcomes.append((False, exc))
                continue
            capacity[owner_id] = (tasks + 1, limit)
            rows.append(item.params)
            outcomes.append((True, item.task))
        insert_rows(conn, rows)
        return outcomes

    async def create_tasks(
        self, owner_id: str, news: Sequence[NewTask], now_ms: int
    ) -> list[Task | TasksServerError]:
        items = self._registrations(owner_id, news, now_ms)

        def op(conn: sqlite3.Connection) -> list[Task | TasksServerError]:
            return self._register_all(conn, owner_id, items, now_ms)

        return await self._write(op, savepoint=True)

    def _register_all(
        self, conn: sqlite3.Connection, owner_id: str, items: list[_Registration], now_ms: int
    ) -> list[Task | TasksServerError]:
        """Insert ``items`` in order, each answered by its task or its error. Runs of plain
        registrations go in a few multi-row INSERTs (``insert_owner_rows``); the queue limit is
        counted here, from one read of the owner's row."""
        tasks, limit = self._capacity(conn, owner_id)
        results: list[Task | TasksServerError] = []
        run: list[tuple[Any, ...]] = []
        for item in items:
            if item.is_plain:
                try:
                    _check_room(tasks, limit)
                except TasksServerError as exc:
                    results.append(exc)
                    continue
                run.append(item.params)
                results.append(item.task)
                tasks += 1
                continue
            insert_owner_rows(conn, owner_id, now_ms, run)
            run = []
            try:
                result, added = self._register_one(conn, owner_id, item, now_ms, tasks, limit)
            except TasksServerError as exc:  # checked before any write of the item
                results.append(exc)
                continue
            results.append(result)
            tasks += added
        insert_owner_rows(conn, owner_id, now_ms, run)
        return results

    def _register_one(
        self,
        conn: sqlite3.Connection,
        owner_id: str,
        item: _Registration,
        now_ms: int,
        tasks: int,
        limit: int,
    ) -> tuple[Task, int]:
        """A registration with a deduplication id or a flow-control key: the task (an
        existing one when deduplicated) and how many rows it added (0 or 1)."""
        if item.dedup_key is not None:
            existing = self._deduplicated(conn, owner_id, item.dedup_key, now_ms)
            if existing is not None:
                return existing, 0
        _check_room(tasks, limit)
        conn.execute(TASK_REGISTER, item.params)
        flow = item.flow
        if flow is not None:
            conn.execute(
                FLOW_UPSERT,
                (owner_id, flow.key, flow.rate, flow.period.ms, flow.parallelism, now_ms),
            )
        return item.task, 1

    @staticmethod
    def _capacity(conn: sqlite3.Connection, owner_id: str) -> tuple[int, int]:
        """(tasks in queue, the owner's limit, 0: none). Raises OwnerNotFound."""
        row = conn.execute(OWNER_CAPACITY, (owner_id,)).fetchone()
        if row is None:
            raise OwnerNotFound()
        return row[0], row[1]

    def _registration(self, owner_id: str, new: NewTask, now_ms: int) -> _Registration:
        return self._registrations(owner_id, [new], now_ms)[0]

    def _registrations(
        self, owner_id: str, news: Sequence[NewTask], now_ms: int
    ) -> list[_Registration]:
        """The rows of registrations (sealed here, outside the writer; the ids and nonces
        of the batch come from one read of the random source each: ``new_task_ids``)."""
        ids = new_task_ids(now_ms, len(news))
        plains: list[bytes | None] = [self._spec_json(new.spec) for new in news]
        plains += [
            None if n.spec.metadata is None else METADATA.dump_json(n.spec.metadata) for n in news
        ]
        sealed = self._sealer.seal_many(plains)
        count = len(news)
        return [
            _row(owner_id, new, now_ms, task_id, sealed[index], sealed[count + index])
            for index, (new, task_id) in enumerate(zip(news, ids, strict=True))
        ]

    def _deduplicated(
        self, conn: sqlite3.Connection, owner_id: str, key: str, now_ms: int
    ) -> Task | None:
        """The live task registered with ``key``; an expired one gives the key up."""
        row = conn.execute(TASK_BY_DEDUP, (owner_id, key)).fetchone()
        if row is None:
            return None
        if row[-1] is not None and row[-1] <= now_ms:
            conn.execute(TASK_DEDUP_EXPIRE, (owner_id, key))
            return None
        return dataclasses.replace(self._task(row[:-1]), deduplicated=True)


def _row(
    owner_id: str,
    new: NewTask,
    now_ms: int,
    task_id: str,
    spec_blob: bytes | None,
    metadata_blob: bytes | None,
) -> _Registration:
    config = new.spec.config
    dedup_key = config.deduplication_id if new.dedup_until_ms is not None else None
    flow = config.flow_control
    due = new.due_at_ms
    params = (
        task_id,
        owner_id,
        now_ms,
        due,
        due,
        due,
        metadata_blob,
        spec_blob,
        config.priority,
        dedup_key,
        new.dedup_until_ms if dedup_key is not None else None,
        None if flow is None else flow.key,
        host_of(new.spec.request.url),
    )
    task = new.registered(task_id, owner_id, now_ms)
    return _Registration(params, task, dedup_key, flow)
