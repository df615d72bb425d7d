"""Listing many tasks at once (the dashboard): the query and result values of the Store
methods search_tasks and task_overview, and what every implementation shares for them (the
host stored in the clear beside the sealed request, the filters on sealed values, the
hourly buckets)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any
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
