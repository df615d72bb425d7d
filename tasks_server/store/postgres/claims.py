"""The engine's operations on PostgreSQL: due tasks, claims as leases, and fenced
outcomes (their renewal and reclaiming: leases.py).

A claim locks the task rows with ``FOR UPDATE SKIP LOCKED``: nodes claiming at the same
instant take disjoint tasks and never wait for each other. A claim is a lease held by this
node until ``lease_until``; the node renews its leases while calls are in flight. An
outcome is written only while the task is still in flight at the same attempt number and
leased by this node, so a late result from a node that lost its lease changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Any, LiteralString

import psycopg
from psycopg import AsyncCursor

from ...errors import StorageUnavailable
from ...models import Attempt, DueTask, Result
from ..details import seal_detail
from ..listing import host_of
from .base import APPLICATION_NAME, LIVE_NODES, PgBase, backup_at, first_node
from .flow import FLOW_IN_FLIGHT, FLOW_LOCK, FLOW_SPEND, allowance

logger = logging.getLogger(__name__)
Cursor = AsyncCursor[tuple[Any, ...]]

TASK_DUE: LiteralString = (
    "SELECT id, next_at, priority, owner_id, flow_key FROM task "
    "WHERE next_at IS NOT NULL AND next_at < %s ORDER BY next_at, priority DESC LIMIT %s"
)
# one statement: lock what is still claimable (skipping rows another node is claiming),
# take the lease, and open the attempt rows. A task whose flow-control key has limits is
# claimed only once admitted under the key's lock (flow.py).
TASK_CLAIM: LiteralString = (
    "WITH picked AS ("
    " SELECT id FROM task t WHERE id = ANY(%(ids)s) AND next_at <= %(until)s"
    " AND state = 'RUNNING' AND NOT in_flight"
    " AND (flow_key IS NULL OR id = ANY(%(admitted)s) OR NOT EXISTS ("
    "  SELECT 1 FROM flow_control f WHERE f.owner_id = t.owner_id AND f.key = t.flow_key"
    "  AND (f.rate IS NOT NULL OR f.parallelism IS NOT NULL OR f.paused)))"
    " FOR UPDATE SKIP LOCKED"
    "), claimed AS ("
    " UPDATE task t SET in_flight = true, next_at = NULL, attempts = t.attempts + 1,"
    " lease_owner = %(node)s, lease_until = %(lease_until)s,"
    " first_attempt_at = coalesce(t.first_attempt_at, greatest(%(now)s::bigint, t.due_at))"
    " FROM picked WHERE t.id = picked.id"
    " RETURNING t.id, t.attempts, t.retry_count, t.due_at, t.spec, t.owner_id,"
    " t.schedule_id, t.cycle, t.first_attempt_at"
    "), opened AS ("
    " INSERT INTO attempt (task_id, number, started_at, cycle)"
    " SELECT id, attempts, greatest(%(now)s::bigint, due_at), cycle FROM claimed"
    # and, in the same round trip, whether a candidate left out waits for its key's
    # limits (a row without an attempt number): then those are admitted under the key's
    # lock (_claim_flow_limited)
    "), limited AS ("
    " SELECT t.id FROM task t JOIN flow_control f ON f.owner_id = t.owner_id"
    " AND f.key = t.flow_key WHERE t.id = ANY(%(ids)s) AND t.flow_key IS NOT NULL"
    " AND NOT t.in_flight AND NOT t.id = ANY(%(admitted)s)"
    " AND (f.rate IS NOT NULL OR f.parallelism IS NOT NULL OR f.paused) LIMIT 1"
    ") SELECT id, attempts, retry_count, due_at, spec, owner_id, schedule_id, first_attempt_at"
    " FROM claimed UNION ALL SELECT id, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM limited"
)
# the error and response headers are sealed together in ``detail`` (they may carry secrets)
ATTEMPT_FINISH: LiteralString = (
    "UPDATE attempt a SET finished_at = r.finished_at, status_code = r.status_code, "
    "detail = r.detail, response = r.response, total_ms = r.total_ms, "
    "truncated = r.truncated "
    "FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::int[], %s::bytea[], %s::bytea[], "
    "%s::float8[], %s::boolean[]) "
    "AS r(task_id, number, finished_at, status_code, detail, response, total_ms, truncated) "
    # an attempt closed as interrupted (its lease ran out) keeps that ending, and a node
    # never writes into the history of a task another node holds
    "WHERE a.task_id = r.task_id AND a.number = r.number AND a.finished_at IS NULL "
    "AND NOT EXISTS (SELECT 1 FROM task t WHERE t.id = a.task_id AND t.in_flight "
    "AND t.lease_owner <> %s)"
)
# fenced: still in flight, at this attempt, under this node's lease
TASK_FINISH: LiteralString = (
    "UPDATE task t SET in_flight = false, lease_owner = NULL, lease_until = NULL, "
    "state = r.state, status_code = r.status_code, response = r.response, "
    "response_truncated = r.truncated, "
    "estimate_end_at = r.end_at, due_at = coalesce(r.next_due, t.due_at), "
    "next_at = r.next_due, retry_count = t.retry_count + r.retried "
    "FROM unnest(%s::text[], %s::int[], %s::text[], %s::int[], %s::bytea[], %s::bigint[], "
    "%s::bigint[], %s::int[], %s::boolean[]) "
    "AS r(id, number, state, status_code, response, end_at, next_due, retried, truncated) "
    "WHERE t.id = r.id AND t.state = 'RUNNING' AND t.in_flight AND t.attempts = r.number "
    "AND t.lease_owner = %s "
    # and which of them are workflow steps (their run advances in the same transaction)
    "RETURNING t.id, EXISTS (SELECT 1 FROM workflow_step w WHERE w.task_id = t.id)"
)
# both in one round trip: the attempt's update sees the task as it was before the task's
# (one snapshot), as when run first on its own
OUTCOME_FINISH: LiteralString = "WITH attempt_finished AS (" + ATTEMPT_FINISH + ") " + TASK_FINISH
# history bounds (ATTEMPTS_KEPT): the first attempt stays, and the last N; the attempts
# deleted between them are counted on the task
ATTEMPT_PRUNE: LiteralString = (
    "WITH gone AS ("
    " DELETE FROM attempt a USING unnest(%s::text[], %s::int[]) AS r(task_id, below)"
    " WHERE a.task_id = r.task_id AND a.number > 1 AND a.number <= r.below"
    " AND a.finished_at IS NOT NULL RETURNING a.task_id"
    ") UPDATE task t SET attempts_pruned = t.attempts_pruned + g.n"
    " FROM (SELECT task_id, count(*) AS n FROM gone GROUP BY task_id) g WHERE t.id = g.task_id"
)
# a callback: the finished task's owner (the limit is not checked: the finished task has
# just stopped being counted, in the same transaction)
TASK_FOLLOW_UP: LiteralString = (
    "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
    "next_at, metadata, spec, host) SELECT %s, owner_id, 'RUNNING', %s, %s, %s, %s, %s, %s, %s "
    "FROM task WHERE id = %s"
)
_LIVE_NODES_PARAMS = (len(APPLICATION_NAME) + 2, f"{APPLICATION_NAME} %")


class PgClaimOps(PgBase):
    async def due_before(self, until_ms: int, limit: int) -> list[DueTask]:
        """Due tasks, each at the time this node first tries to claim it: its due time
        if this node made it claimable or, for a task no node told of, if it is the
        task's first node among the nodes serving now (first_node); else the backup
        time (see BACKUP_MARGIN_MS)."""
        rows = await self._read(TASK_DUE, (until_ms, limit))
        nodes = [row[0] for row in await self._read(LIVE_NODES, _LIVE_NODES_PARAMS)]
        if self.node_id not in nodes:
            nodes.append(self.node_id)
        # what was told of before now is done with: claimed, or in the timers already
        now_ms = until_ms - self._wake_horizon_ms
        backups = self._backups = {k: at for k, at in self._backups.items() if at >= now_ms}
        firsts = self._firsts = {k: due for k, due in self._firsts.items() if due >= now_ms}
        after_ms = self._backup_after_ms
        due: list[DueTask] = []
        for task_id, due_ms, priority, owner_id, flow_key in rows:
            if task_id in firsts or (
                task_id not in backups and first_node(task_id, nodes) == self.node_id
            ):
                at = due_ms
            else:
                at = max(backups.get(task_id, 0), backup_at(due_ms, after_ms))
            flow = None if flow_key is None else (owner_id, flow_key)
            due.append(DueTask(task_id, at, priority, flow))
        return due

    async def claim_due(
        self, task_ids: Sequence[str], now_ms: int, lookahead_ms: int = 0
    ) -> list[Attempt]:
        if not task_ids:
            return []
        params = {
            "ids": list(task_ids),
            "admitted": [],
            "until": now_ms + lookahead_ms,
            "node": self.node_id,
            "lease_until": now_ms + self._lease_ms,
            "now": now_ms,
        }

        # one statement, one round trip (no BEGIN and COMMIT) for what needs no key's lock
        answer = await self._claim_once(params)
        rows = [row for row in answer if row[1] is not None]
        if len(rows) < len(answer):  # some candidates wait for their key's limits
            got = {row[0] for row in rows}
            rest = [task_id for task_id in task_ids if task_id not in got]
            if rest:

                async def op(cur: Cursor) -> tuple[list[tuple[Any, ...]], list[tuple[str, int]]]:
                    return await self._claim_flow_limited(cur, rest, params)

                more, refused = await self._tx(op)
                rows += more
                for task_id, retry_ms in refused:
                    self._rearm(task_id, retry_ms)
        order = {task_id: i for i, task_id in enumerate(task_ids)}
        rows.sort(key=lambda row: order[row[0]])
        return [
            Attempt(
                task_id=row[0],
                number=row[1],
                spec=self._open_spec(row[4]),
                retry_count=row[2],
                due_at_ms=row[3],
                started_at_ms=max(now_ms, row[3]),
                owner_id=row[5],
                schedule_id=row[6],
                first_started_at_ms=row[7],
            )
            for row in rows
        ]

    async def _claim_once(self, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """TASK_CLAIM on a pooled connection. The lease runs from the moment the statement
        is sent: time spent waiting for a connection (a busy node under load) is added,
        or the claim could land with its lease nearly over and be reclaimed at once."""
        assert self._pool is not None, "store is not open"
        asked = time.monotonic()
        try:
            async with self._pool.connection() as conn:
                waited_ms = int((time.monotonic() - asked) * 1000)
                params["lease_until"] += waited_ms
                rows = await (await conn.execute(TASK_CLAIM, params)).fetchall()
        except psycopg.OperationalError as exc:
            self._write_problem = f"the database is out of reach: {exc}"
            raise StorageUnavailable(self._write_problem) from exc
        self._write_problem = None
        return rows

    async def _claim_flow_limited(
        self, cur: Cursor, task_ids: list[str], params: dict[str, Any]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[str, int]]]:
        """Of candidates the first claim left, those whose key has limits: admitted under
        the keys' locks as far as the keys' shared limits allow, then claimed; returns the
        claimed rows and the refused tasks with when to try them again (see flow.py)."""
        await cur.execute(FLOW_LOCK, (task_ids,))
        locked = await cur.fetchall()
        if not locked:
            return [], []
        key_of = {row[0]: (row[1], row[2]) for row in locked}
        limits = {(row[1], row[2]): row[3:] for row in locked}
        owners, keys = [k[0] for k in limits], [k[1] for k in limits]
        await cur.execute(FLOW_IN_FLIGHT, (owners, keys))
        counts = {(row[0], row[1]): row[2] for row in await cur.fetchall()}
        now = params["now"]
        keys_now = {
            ref: allowance(rate, period, parallel, paused, credit, at, counts.get(ref, 0), now)
            for ref, (rate, period, parallel, paused, credit, at) in limits.items()
        }
        admitted: list[str] = []
        refused: list[tuple[str, int]] = []
        for task_id in task_ids:  # in the caller's order: due time, then priority
            ref = key_of.get(task_id)
            if ref is None:
                continue
            if keys_now[ref].take():
                admitted.append(task_id)
            else:
                refused.append((task_id, keys_now[ref].retry_ms))
        rows: list[tuple[Any, ...]] = []
        if admitted:
            await cur.execute(TASK_CLAIM, {**params, "ids": admitted, "admitted": admitted})
            rows = [row for row in await cur.fetchall() if row[1] is not None]
        started = Counter(key_of[row[0]] for row in rows)
        spent = [(ref, key) for ref, key in keys_now.items() if key.rate is not None]
        if spent:
            await cur.execute(
                FLOW_SPEND,
                (
                    [ref[0] for ref, _ in spent],
                    [ref[1] for ref, _ in spent],
                    [key.credit_after(started[ref]) for ref, key in spent],
                    [key.at_ms for _, key in spent],
                ),
            )
        return rows, refused

    def _rearm(self, task_id: str, due_ms: int) -> None:
        """Arm a task of this node's scheduler again (set by the store's listener)."""

    async def record_outcomes(self, results: Sequence[Result]) -> list[str]:
        if not results:
            return []
        attempts = self._attempt_columns(results)
        tasks = self._task_columns(results)
        renotify = [(r.task_id, r.next_due_at_ms) for r in results if r.next_due_at_ms is not None]
        follow_ups = {
            r.follow_up.task_id: self._follow_up_params(r) for r in results if r.follow_up
        }
        now = max(r.finished_at_ms for r in results)
        keep = self._keep_attempts
        pruning = [r for r in results if keep and r.attempt_number - keep >= 2]
        prune = ([r.task_id for r in pruning], [r.attempt_number - keep for r in pruning])

        async def op(cur: Cursor) -> tuple[list[str], Callable[[], None]]:
            await cur.execute(OUTCOME_FINISH, (*attempts, self.node_id, *tasks, self.node_id))
            rows = await cur.fetchall()
            updated = {row[0] for row in rows}
            steps = {row[0] for row in rows if row[1]}
            if prune[0]:
                await cur.execute(ATTEMPT_PRUNE, prune)
            created = [r.follow_up for r in results if r.follow_up and r.task_id in updated]
            if created:
                params = [follow_ups[f.task_id] for f in created]
                await cur.executemany(TASK_FOLLOW_UP, params)
            due = [r for r in renotify if r[0] in updated]
            due += [(f.task_id, f.due_at_ms) for f in created]
            await self._notify_due(cur, due, now)
            recorded = [r for r in results if r.task_id in updated]
            announce = await self._outcome_followups(cur, recorded, steps)
            return [r.task_id for r in recorded], announce

        updated, announce = await self._tx(op)
        announce()
        return updated

    async def _outcome_followups(
        self, cur: Cursor, results: Sequence[Result], steps: Collection[str]
    ) -> Callable[[], None]:
        """Writes that follow recorded outcomes in the same transaction (the workflow
        steps among them: ``steps``); returns what to announce once it is committed.
        Nothing here."""
        return lambda: None

    def _follow_up_params(self, result: Result) -> tuple[Any, ...]:
        follow_up = result.follow_up
        assert follow_up is not None
        due = follow_up.due_at_ms
        return (
            follow_up.task_id,
            due,
            due,
            due,
            due,
            self._seal_metadata(follow_up.spec.metadata),
            self._seal_spec(follow_up.spec),
            host_of(follow_up.spec.request.url),
            result.task_id,
        )

    def _attempt_columns(self, results: Sequence[Result]) -> tuple[list[Any], ...]:
        return (
            [r.task_id for r in results],
            [r.attempt_number for r in results],
            [r.finished_at_ms for r in results],
            [r.outcome.status for r in results],
            [seal_detail(self._sealer, r.outcome.error, r.outcome.headers) for r in results],
            [self._seal(r.outcome.body or None) for r in results],
            [r.outcome.total_ms for r in results],
            [r.outcome.truncated for r in results],
        )

    def _task_columns(self, results: Sequence[Result]) -> tuple[list[Any], ...]:
        retrying = [r.next_due_at_ms is not None for r in results]
        return (
            [r.task_id for r in results],
            [r.attempt_number for r in results],
            [r.state.value for r in results],
            [r.status_code for r in results],
            [self._seal(r.response) for r in results],
            [0 if again else r.finished_at_ms for r, again in zip(results, retrying, strict=True)],
            [r.next_due_at_ms for r in results],
            [1 if again else 0 for again in retrying],
            [r.outcome.truncated for r in results],
        )
