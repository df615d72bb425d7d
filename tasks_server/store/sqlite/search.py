"""The dashboard's reads of many tasks at once (lists and overview) on SQLite: the shared
statements of store/listing.py, over the indexes of migration 0007; counts run on the
store's scanning connection so they never hold up short reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..listing import ListingSql, TaskOverview, TaskPage, TaskQuery, TaskRow
from .base import TASK_COLUMNS, StoreBase

_LISTING = ListingSql(TASK_COLUMNS, "?")


class SearchOps(StoreBase):
    """The dashboard's reads of SqliteStore."""

    async def search_tasks(self, owner_id: str, query: TaskQuery) -> TaskPage:
        return await _LISTING.search_tasks(owner_id, query, self._read, self._task_row)

    def _task_row(self, row: Sequence[Any]) -> TaskRow:
        spec = self._open_spec(row[-3])
        task = self._task(row[:-3])
        return TaskRow(task, spec.request.method, spec.request.url, row[-2], row[-1])

    async def task_overview(self, owner_id: str | None, now_ms: int) -> TaskOverview:
        return await _LISTING.task_overview(owner_id, now_ms, self._scan)
