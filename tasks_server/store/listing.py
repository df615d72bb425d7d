"""What every Store implementation shares for listing many tasks: the host stored in the
clear beside the sealed request, the filters on sealed values, the hourly buckets."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..models import TaskQuery, TaskState

HOUR_MS = 3_600_000


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
