"""Reading many tasks at once (the dashboard's lists and overview) and their SQL: keyset
pages over indexed filters, and counts over the indexes of migration 0007."""

from __future__ import annotations

from typing import Any, LiteralString

from ...models import TaskState
from ..listing import HOUR_MS, TaskOverview, TaskPage, TaskQuery, TaskRow, hourly, matches
from .base import TASK_COLUMNS, StoreBase

_SCAN_BATCH = 500

_SELECT: LiteralString = f"SELECT {TASK_COLUMNS}, spec, host, schedule_id FROM task WHERE "
# each filter is a fixed fragment with its placeholders; only the chosen ones are joined
_STATE: LiteralString = " AND state = ?"
_HOST: LiteralString = " AND host = ?"
_SCHEDULE: LiteralString = " AND schedule_id = ?"
_FROM: LiteralString = " AND created_at >= ?"
_TO: LiteralString = " AND created_at < ?"
_BEFORE: LiteralString = " AND (created_at, id) < (?, ?)"
_AFTER: LiteralString = " AND (created_at, id) > (?, ?)"
_NEWEST: LiteralString = " ORDER BY created_at DESC, id DESC LIMIT ?"
_OLDEST: LiteralString = " ORDER BY created_at ASC, id ASC LIMIT ?"

COUNT_BY_STATE: LiteralString = "SELECT state, count(*) FROM task WHERE owner_id = ? GROUP BY state"
COUNT_BY_STATE_ALL: LiteralString = "SELECT state, count(*) FROM task GROUP BY state"
FINISHED_BY_HOUR: LiteralString = (
    "SELECT estimate_end_at / 3600000, state, count(*) FROM task "
    "WHERE owner_id = ? AND state IN ('SUCCESS', 'ERROR') AND estimate_end_at >= ? "
    "GROUP BY 1, 2"
)
FINISHED_BY_HOUR_ALL: LiteralString = (
    "SELECT estimate_end_at / 3600000, state, count(*) FROM task "
    "WHERE state IN ('SUCCESS', 'ERROR') AND estimate_end_at >= ? GROUP BY 1, 2"
)
BUSIEST_HOSTS: LiteralString = (
    "SELECT host, count(*) FROM task WHERE owner_id = ? AND state = 'RUNNING' "
    "AND host IS NOT NULL GROUP BY host ORDER BY 2 DESC, host LIMIT 5"
)
BUSIEST_HOSTS_ALL: LiteralString = (
    "SELECT host, count(*) FROM task WHERE state = 'RUNNING' "
    "AND host IS NOT NULL GROUP BY host ORDER BY 2 DESC, host LIMIT 5"
)


def search_sql(query: TaskQuery) -> tuple[LiteralString, list[Any]]:
    """The statement of one batch of a search (without the keyset bounds' values and the
    limit, which the caller appends) and its filter parameters."""
    sql: LiteralString = _SELECT + "owner_id = ?"
    params: list[Any] = []
    if query.state is not None:
        sql += _STATE
        params.append(query.state.value)
    if query.host is not None:
        sql += _HOST
        params.append(query.host)
    if query.schedule_id is not None:
        sql += _SCHEDULE
        params.append(query.schedule_id)
    if query.created_from_ms is not None:
        sql += _FROM
        params.append(query.created_from_ms)
    if query.created_to_ms is not None:
        sql += _TO
        params.append(query.created_to_ms)
    return sql, params


class SearchOps(StoreBase):
    """The dashboard's reads of SqliteStore."""

    async def search_tasks(self, owner_id: str, query: TaskQuery) -> TaskPage:
        base, filters = search_sql(query)
        scanning = bool(query.url_contains) or query.label is not None
        batch = _SCAN_BATCH if scanning else query.limit + 1
        found: list[TaskRow] = []
        after = query.after
        scanned = 0
        while True:
            sql: LiteralString = base
            params = [owner_id, *filters]
            if after is not None:
                sql += _BEFORE if query.newest_first else _AFTER
                params += [after[0], after[1]]
            sql += _NEWEST if query.newest_first else _OLDEST
            rows = await self._read(sql, [*params, batch])
            for index, row in enumerate(rows):
                if len(found) == query.limit:
                    return TaskPage(tuple(found), after)
                after = (row[3], row[0])
                scanned += 1
                item = self._row(row)
                if matches(query, item.url, item.task.metadata):
                    found.append(item)
                if scanning and scanned >= query.scan_limit and index < len(rows) - 1:
                    return TaskPage(tuple(found), after, scan_exhausted=True)
            if len(rows) < batch:
                return TaskPage(tuple(found), None)
            if scanning and scanned >= query.scan_limit:
                return TaskPage(tuple(found), after, scan_exhausted=True)

    def _row(self, row: Any) -> TaskRow:
        spec = self._open_spec(row[-3])
        task = self._task(row[:-3])
        return TaskRow(task, spec.request.method, spec.request.url, row[-2], row[-1])

    async def task_overview(self, owner_id: str | None, now_ms: int) -> TaskOverview:
        since = (now_ms // HOUR_MS - 23) * HOUR_MS
        if owner_id is None:
            counts = await self._scan(COUNT_BY_STATE_ALL, ())
            finished = await self._scan(FINISHED_BY_HOUR_ALL, (since,))
            hosts = await self._scan(BUSIEST_HOSTS_ALL, ())
        else:
            counts = await self._scan(COUNT_BY_STATE, (owner_id,))
            finished = await self._scan(FINISHED_BY_HOUR, (owner_id, since))
            hosts = await self._scan(BUSIEST_HOSTS, (owner_id,))
        by_state = {state: 0 for state in TaskState}
        by_state.update({TaskState(state): n for state, n in counts})
        return TaskOverview(
            by_state, hourly(finished, now_ms), tuple((host, n) for host, n in hosts)
        )
