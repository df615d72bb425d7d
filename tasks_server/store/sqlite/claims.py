"""The engine's operations: due tasks, claims, outcomes and recovery after a crash."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, LiteralString

from ...models import Attempt, DueTask, FlowSetting, FlowStatus, Result
from ..details import detail_json
from ..flow_keys import FlowKeySql, save_params
from ..listing import host_of
from .base import METADATA, StoreBase

TASK_DUE: LiteralString = (
    "SELECT id, next_at, priority, owner_id, flow_key FROM task "
    "WHERE next_at IS NOT NULL AND next_at < ? ORDER BY next_at, priority DESC LIMIT ?"
)
TASK_CLAIM: LiteralString = (
    "UPDATE task SET in_flight = 1, next_at = NULL, attempts = attempts + 1, "
    "first_attempt_at = coalesce(first_attempt_at, max(?, due_at)) "
    "WHERE id = ? AND state = 'RUNNING' AND in_flight = 0 AND next_at <= ? "
    "RETURNING attempts, retry_count, due_at, spec, owner_id, schedule_id, cycle, "
    "first_attempt_at"
)
TASK_FINISH: LiteralString = (
    "UPDATE task SET in_flight = 0, state = ?, status_code = ?, response = ?, "
    "response_truncated = ?, estimate_end_at = ?, due_at = coalesce(?, due_at), next_at = ?, "
    "retry_count = retry_count + ? "
    "WHERE id = ? AND state = 'RUNNING' AND in_flight = 1 AND attempts = ?"
)
TASK_REQUEUE: LiteralString = (
    "UPDATE task SET in_flight = 0, next_at = due_at WHERE in_flight = 1 AND state = 'RUNNING'"
)
TASK_REARM: LiteralString = (
    "UPDATE task SET next_at = due_at WHERE state = 'RUNNING' AND in_flight = 0 AND next_at IS NULL"
)
# a callback: the finished task's owner, counted like a new task (the finished task has
# just stopped being counted, in the same transaction)
TASK_FOLLOW_UP: LiteralString = (
    "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
    "next_at, metadata, spec, host) SELECT ?, owner_id, 'RUNNING', ?, ?, ?, ?, ?, ?, ? "
    "FROM task WHERE id = ?"
)
ATTEMPT_INSERT: LiteralString = (
    "INSERT INTO attempt (task_id, number, started_at, cycle) VALUES (?, ?, ?, ?)"
)
ATTEMPT_FINISH: LiteralString = (
    "UPDATE attempt SET finished_at = ?, status_code = ?, detail = ?, response = ?, "
    "truncated = ?, total_ms = ? WHERE task_id = ? AND number = ?"
)
# history bounds: the first attempt stays, and the last N (ATTEMPTS_KEPT)
ATTEMPT_PRUNE: LiteralString = (
    "DELETE FROM attempt WHERE task_id = ? AND number > 1 AND number <= ? "
    "AND finished_at IS NOT NULL"
)
TASK_PRUNED: LiteralString = "UPDATE task SET attempts_pruned = attempts_pruned + ? WHERE id = ?"
ATTEMPT_INTERRUPT: LiteralString = (
    "UPDATE attempt SET finished_at = ?, error = 'interrupted: the server stopped' "
    "WHERE finished_at IS NULL"
)


FLOW_SAVE: LiteralString = (
    "INSERT INTO flow_control (owner_id, key, rate, period_ms, parallelism, paused, "
    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner_id, key) DO UPDATE SET "
    "rate = excluded.rate, period_ms = excluded.period_ms, "
    "parallelism = excluded.parallelism, paused = excluded.paused, "
    "updated_at = excluded.updated_at"
)
_FLOW_KEYS = FlowKeySql("?")


class ClaimOps(StoreBase):
    """The engine's operations of SqliteStore: find, claim and record attempts."""

    async def due_before(self, until_ms: int, limit: int) -> list[DueTask]:
        return [
            DueTask(row[0], row[1], row[2], None if row[4] is None else (row[3], row[4]))
            for row in await self._read(TASK_DUE, (until_ms, limit))
        ]

    async def claim_due(
        self, task_ids: Sequence[str], now_ms: int, lookahead_ms: int = 0
    ) -> list[Attempt]:
        until = now_ms + lookahead_ms

        def op(conn: sqlite3.Connection) -> list[tuple[str, Any]]:
            claimed = []
            for task_id in task_ids:
                row = conn.execute(TASK_CLAIM, (now_ms, task_id, until)).fetchone()
                if row is not None:
                    conn.execute(ATTEMPT_INSERT, (task_id, row[0], max(now_ms, row[2]), row[6]))
                    claimed.append((task_id, row))
            return claimed

        rows = await self._write(op, savepoint=True)
        return [
            Attempt(
                task_id=task_id,
                number=row[0],
                spec=self._open_spec(row[3]),
                retry_count=row[1],
                due_at_ms=row[2],
                started_at_ms=max(now_ms, row[2]),
                owner_id=row[4],
                schedule_id=row[5],
                first_started_at_ms=row[7],
            )
            for task_id, row in rows
        ]

    async def record_outcomes(self, results: Sequence[Result]) -> list[str]:
        follow_ups = {r.task_id: self._follow_up_params(r) for r in results if r.follow_up}

        def op(conn: sqlite3.Connection) -> tuple[list[str], Callable[[], None]]:
            # Sealed here, on the writer's thread: the event loop sends the next calls
            # meanwhile (libcurl lets go of the GIL while it works).
            rows = self._outcome_params(results)
            updated = []
            for result, (attempt_params, task_params) in zip(results, rows, strict=True):
                conn.execute(ATTEMPT_FINISH, attempt_params)
                if conn.execute(TASK_FINISH, task_params).rowcount:
                    updated.append(result.task_id)
                    if result.task_id in follow_ups:
                        conn.execute(TASK_FOLLOW_UP, follow_ups[result.task_id])
                if keep:
                    self._prune(conn, result.task_id, result.attempt_number - keep)
            recorded = set(updated)
            finished = [r for r in results if r.task_id in recorded]
            announce = self._outcome_followups(conn, finished, budget)
            return updated, announce

        keep = self._keep_attempts
        budget = self._followup_claims()
        updated, announce = await self._write(op, savepoint=True)
        announce()
        return updated

    def _outcome_followups(
        self, conn: sqlite3.Connection, results: Sequence[Result], claims: int
    ) -> Callable[[], None]:
        """Writes that follow recorded outcomes in the same transaction (workflow steps),
        creating up to ``claims`` new tasks already claimed; returns what to announce once
        it is committed. Nothing here."""
        return lambda: None

    def _followup_claims(self) -> int:
        """How many tasks the follow-up writes may create already claimed (read on the
        event loop, before the transaction). None here."""
        return 0

    def _follow_up_params(self, result: Result) -> tuple[Any, ...]:
        follow_up = result.follow_up
        assert follow_up is not None
        metadata = follow_up.spec.metadata
        metadata_blob = self._seal(None if metadata is None else METADATA.dump_json(metadata))
        due = follow_up.due_at_ms
        spec_blob = self._seal_spec(follow_up.spec)
        host = host_of(follow_up.spec.request.url)
        return (
            *(follow_up.task_id, due, due, due, due, metadata_blob, spec_blob, host),
            result.task_id,
        )

    @staticmethod
    def _prune(conn: sqlite3.Connection, task_id: str, below: int) -> None:
        """Delete the attempts between the first and number ``below`` (exclusive of the
        first, inclusive of ``below``), counting them on the task."""
        if below < 2:
            return
        pruned = conn.execute(ATTEMPT_PRUNE, (task_id, below)).rowcount
        if pruned:
            conn.execute(TASK_PRUNED, (pruned, task_id))

    def _outcome_params(
        self, results: Sequence[Result]
    ) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        """The parameters of each result's attempt and task updates. The values are sealed
        in one go (``Sealer.seal_many``: one read of the random source, which lets go of the
        GIL, for the whole batch rather than three per result)."""
        plains: list[bytes | None] = []
        for result in results:
            outcome = result.outcome
            plains += [
                detail_json(outcome.error, outcome.headers),
                outcome.body or None,
                result.response,
            ]
        sealed = iter(self._sealer.seal_many(plains))
        rows = []
        for result in results:
            outcome = result.outcome
            detail, body, response = next(sealed), next(sealed), next(sealed)
            retrying = result.next_due_at_ms is not None
            attempt_params = (
                result.finished_at_ms,
                outcome.status,
                detail,
                body,
                int(outcome.truncated),
                outcome.total_ms,
                result.task_id,
                result.attempt_number,
            )
            task_params = (
                result.state.value,
                result.status_code,
                response,
                int(outcome.truncated),
                0 if retrying else result.finished_at_ms,
                result.next_due_at_ms,
                result.next_due_at_ms,
                1 if retrying else 0,
                result.task_id,
                result.attempt_number,
            )
            rows.append((attempt_params, task_params))
        return rows

    async def requeue_interrupted(self, now_ms: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            conn.execute(ATTEMPT_INTERRUPT, (now_ms,))
            requeued: int = conn.execute(TASK_REQUEUE).rowcount
            conn.execute(TASK_REARM)
            return requeued

        return await self._write(op, savepoint=True)

    async def get_flow_control(self, owner_id: str, key: str) -> FlowSetting | None:
        return await _FLOW_KEYS.get(owner_id, key, self._read)

    async def list_flow_controls(self, owner_id: str) -> list[FlowStatus]:
        return await _FLOW_KEYS.list(owner_id, self._read)

    async def save_flow_control(self, owner_id: str, setting: FlowSetting, now_ms: int) -> None:
        params = save_params(owner_id, setting, now_ms)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(FLOW_SAVE, params)

        await self._write(op)
