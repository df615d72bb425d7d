"""Every Store implementation the shared tests run against, by name.

The ``store`` fixture (tests/conftest.py) is parametrised over ``STORES``: a test that
takes ``store`` (or ``make_store``) runs once per implementation. To add one, write a
factory with the same signature and add it here; a factory that needs a server (e.g. a
database cluster) gets it lazily through ``request.getfixturevalue``, so the others do
not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pytest

from tasks_server.sealing import Sealer
from tasks_server.store import Store
from tasks_server.store.postgres import PostgresStore
from tasks_server.store.sqlite import SqliteStore


class StoreMaker(Protocol):
    def __call__(self, sealer: Sealer, keep_attempts: int = 0) -> Store:
        """A new, unopened store on this test's database (the same one on every call);
        ``keep_attempts``: the attempts kept per task besides the first (0: all)."""
        ...


def postgres_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreMaker:
    url: str = request.getfixturevalue("database_url")  # a new database on the test cluster

    def make(sealer: Sealer, keep_attempts: int = 0) -> Store:
        return PostgresStore(url, sealer, lease_ms=10_000, pool_size=4, keep_attempts=keep_attempts)

    return make


def sqlite_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreMaker:
    path = tmp_path / "store.db"

    def make(sealer: Sealer, keep_attempts: int = 0) -> Store:
        return SqliteStore(path, sealer, keep_attempts=keep_attempts)

    return make


STORES: dict[str, Callable[[pytest.FixtureRequest, Path], StoreMaker]] = {
    "sqlite": sqlite_store,
    "postgres": postgres_store,
}
