"""The PostgreSQL store: several nodes share one database (leases, fencing, a leader)."""

from __future__ import annotations

from .store import PostgresStore

__all__ = ["PostgresStore"]
