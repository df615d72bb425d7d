"""Listing many tasks at once (the dashboard): the query and result values of the Store
methods search_tasks and task_overview, and what every implementation shares for them (the
host stored in the clear beside the sealed request, the filters on sealed values, the
hourly buckets)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString
from urllib.parse import urlsplit

from ..models import Task, TaskState

HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """Which of an owner's tasks to list, newest (or oldest) first, one page at a time.

    ``after`` is the (created ms, id) of the last row of the previous page (keyset
    pagination: the cost of a page does not grow with its depth). ``url_contains`` and
    ``label`` match the sealed request and metadata, so they are checked on rows read in
    order, at most ``scan_limit`` rows per page; the other filters are indexed columns.
    """

    state: TaskState | None = None
    host: str | None = None
    schedule_id: str | None = None
    created_from_ms: int | None = None  # inclusive
    created_to_ms: int | None = None  # exclusive
    url_contains: str | None = None  # case-insensitive
    label: tuple[str, str] | None = None  # a metadata entry (key, value)
    newest_first: bool = True
    after: tuple[int, str] | None = None
    limit: int = 50
    scan_limit: int = 20_000


@dataclass(frozen=True, slots=True)
class TaskRow:
    """A task in a list, with what a reader scans a list for."""

    task: Task
    method: str
    url: str
    host: str | None
    schedule_id: str | None


@dataclass(frozen=True, slots=True)
class TaskPage:
    """A page of TaskQuery results. ``next_after`` continues the listing (None at the end);
    ``scan_exhausted`` says the page is short because ``scan_limit`` rows were read."""

    rows: tuple[TaskRow, ...]
    next_after: tuple[int, str] | None
    scan_exhausted: bool = False


@dataclass(frozen=True, slots=True)
class TaskOverview:
    """Figures of one owner's tasks (or every owner's): counts by state, finished tasks
    per hour of the last day (hour start ms, successes, failures, oldest first), and the
    hosts with the most pending tasks."""

    counts: dict[TaskState, int]
    hourly: tuple[tuple[int, int, int], ...]
    busiest_hosts: tuple[tuple[str, int], ...]


@functools.lru_cache(maxsize=4096)  # registrations repeat a few URLs many times
@functools.lru_cache(maxsize=4096)  # pure, and registrations repeat a few URLs many times
def host_of(url: str) -> str | None:
    """The URL's host name, lower case, without port or credentials; None if it has none.

    Only the host is kept in the clear: a URL's path and query may carry secrets (webhook
    tokens), so they stay sealed with the rest of the request.
    """
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host or None


def hourly(rows: list[Any], now_ms: int) -> tuple[tuple[int, int, int], ...]:
    """24 (hour start ms, successes, failures), oldest first, from (hour, state, n) rows."""
    first = now_ms // HOUR_MS - 23
    buckets = {first + i: [0, 0] for i in range(24)}
    for hour, state, count in rows:
        if hour in buckets:
            buckets[hour][0 if state == TaskState.SUCCESS else 1] += count
    return tuple((hour * HOUR_MS, ok, bad) for hour, (ok, bad) in sorted(buckets.items()))


def matches(query: TaskQuery, url: str, metadata: tuple[tuple[str, str], ...] | None) -> bool:
    """The filters on sealed values: the URL substring and the metadata entry."""
    if query.url_contains and query.url_contains.lower() not in url.lower():
        return False
    return query.label is None or query.label in (metadata or ())


# Both stores run the same statements; they differ only in the placeholder (SQLite's "?",
# psycopg's "%s"), so the statements are written once with "?" and rewritten per store.
_SCAN_BATCH = 500  # rows read per batch while scanning sealed values
# the indexed filters, in the order of _filter_values; only the chosen ones are joined
_FILTERS: tuple[LiteralString, ...] = (
    " AND state = ?",
    " AND host = ?",
    " AND schedule_id = ?",
    " AND created_at >= ?",
    " AND created_at < ?",
)
_BEFORE: LiteralString = " AND (created_at, id) < (?, ?)"
_AFTER: LiteralString = " AND (created_at, id) > (?, ?)"
_NEWEST: LiteralString = " ORDER BY created_at DESC, id DESC LIMIT ?"
_OLDEST: LiteralString = " ORDER BY created_at ASC, id ASC LIMIT ?"
_FINISHED_BY_HOUR: LiteralString = (
    "SELECT estimate_end_at / 3600000, state, count(*) FROM task "
    "WHERE {owner}state IN ('SUCCESS', 'ERROR') AND estimate_end_at >= ? GROUP BY 1, 2"
)
_BUSIEST_HOSTS: LiteralString = (
    "SELECT host, count(*) FROM task WHERE {owner}state = 'RUNNING' "
    "AND host IS NOT NULL GROUP BY host ORDER BY 2 DESC, host LIMIT 5"
)

Fetch = Callable[[LiteralString, Sequence[Any]], Awaitable[list[Any]]]


class ListingSql:
    """search_tasks and task_overview over one store: its statements (in its placeholder
    style, over its task columns), run through the read functions it gives."""

    def __init__(self, task_columns: LiteralString, placeholder: LiteralString) -> None:
        self._p = placeholder
        self._select = self._sql(
            f"SELECT {task_columns}, spec, host, schedule_id FROM task WHERE owner_id = ?"
        )
        self._filters = tuple(self._sql(sql) for sql in _FILTERS)
        self._before, self._after = self._sql(_BEFORE), self._sql(_AFTER)
        self._newest, self._oldest = self._sql(_NEWEST), self._sql(_OLDEST)
        self._overview = {
            mine: (
                self._sql(f"SELECT state, count(*) FROM task {where}GROUP BY state"),
                self._sql(_FINISHED_BY_HOUR.format(owner=owner)),
                self._sql(_BUSIEST_HOSTS.format(owner=owner)),
            )
            for mine, where, owner in (
                (True, "WHERE owner_id = ? ", "owner_id = ? AND "),
                (False, "", ""),
            )
        }

    def _sql(self, sql: LiteralString) -> LiteralString:
        # the statements are this module's constants and the store's column list
        return sql.replace("?", self._p)

    def _filtered(self, owner_id: str, query: TaskQuery) -> tuple[LiteralString, list[Any]]:
        """The statement of one batch (without keyset bound and limit) and its parameters."""
        sql: LiteralString = self._select
        params: list[Any] = [owner_id]
        for fragment, value in zip(self._filters, _filter_values(query), strict=True):
            if value is not None:
                sql += fragment
                params.append(value)
        return sql, params

    async def search_tasks(
        self,
        owner_id: str,
        query: TaskQuery,
        fetch: Fetch,
        to_row: Callable[[Sequence[Any]], TaskRow],
    ) -> TaskPage:
        """Keyset pages over the indexed filters; the sealed values (URL, label) are
        matched on rows read in order, at most ``query.scan_limit`` of them."""
        base, filters = self._filtered(owner_id, query)
        scanning = bool(query.url_contains) or query.label is not None
        batch = _SCAN_BATCH if scanning else query.limit + 1
        found: list[TaskRow] = []
        after = query.after
        scanned = 0
        while True:
            sql, params = base, list(filters)
            if after is not None:
                sql += self._before if query.newest_first else self._after
                params += [after[0], after[1]]
            sql += self._newest if query.newest_first else self._oldest
            rows = await fetch(sql, [*params, batch])
            for index, row in enumerate(rows):
                if len(found) == query.limit:
                    return TaskPage(tuple(found), after)
                after = (row[3], row[0])
                scanned += 1
                item = to_row(row)
                if matches(query, item.url, item.task.metadata):
                    found.append(item)
                if scanning and scanned >= query.scan_limit and index < len(rows) - 1:
                    return TaskPage(tuple(found), after, scan_exhausted=True)
            if len(rows) < batch:
                return TaskPage(tuple(found), None)
            if scanning and scanned >= query.scan_limit:
                return TaskPage(tuple(found), after, scan_exhausted=True)

    async def task_overview(self, owner_id: str | None, now_ms: int, fetch: Fetch) -> TaskOverview:
        """Counts by state, finished tasks per hour of the last day, the busiest hosts."""
        since = (now_ms // HOUR_MS - 23) * HOUR_MS
        by_state_sql, finished_sql, hosts_sql = self._overview[owner_id is not None]
        owner = () if owner_id is None else (owner_id,)
        counts = await fetch(by_state_sql, owner)
        finished = await fetch(finished_sql, (*owner, since))
        hosts = await fetch(hosts_sql, owner)
        by_state = {state: 0 for state in TaskState}
        by_state.update({TaskState(state): n for state, n in counts})
        return TaskOverview(
            by_state, hourly(finished, now_ms), tuple((host, n) for host, n in hosts)
        )


def _filter_values(query: TaskQuery) -> tuple[Any, ...]:
    """The indexed filters' values, in the order of _FILTERS (None: not filtered)."""
    state = None if query.state is None else query.state.value
    return (state, query.host, query.schedule_id, query.created_from_ms, query.created_to_ms)
