"""The PostgreSQL store: several nodes share one database (leases, fencing, a leader)."""

from __future__ import annotations

from .base import APPLICATION_NAME
from .migrate import migrate
from .store import PostgresStore

__all__ = ["APPLICATION_NAME", "PostgresStore", "migrate"]
