"""tasks-server: a self-hosted HTTP task server."""

from __future__ import annotations

__version__ = "0.1.0"
