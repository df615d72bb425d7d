"""The owners' signing secrets and validated domains, as the scheduler needs them when a
call starts: read once per owner and kept for a few seconds, so a burst costs one read per
owner and a rotation or a new domain list is seen within ``max_age_s``."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import OwnerNotFound
from ..models import OwnerSecurity
from ..store import Store


class OwnerSecurityCache:
    def __init__(self, store: Store, max_age_s: float = 5.0, limit: int = 10_000) -> None:
        self._store = store
        self._max_age_s = max_age_s
        self._limit = limit
        self._entries: dict[str, tuple[float, OwnerSecurity | None]] = {}

    async def load(self, owner_ids: Iterable[str], now_s: float) -> None:
        """Make ``get`` answer for these owners; reads those not seen within max_age_s."""
        for owner_id in set(owner_ids):
            seen = self._entries.get(owner_id)
            if seen is not None and now_s - seen[0] < self._max_age_s:
                continue
            if len(self._entries) >= self._limit:
                self._entries.clear()
            try:
                security: OwnerSecurity | None = await self._store.owner_security(owner_id)
            except OwnerNotFound:
                security = None  # deleted meanwhile: its calls go out unsigned, unlisted
            self._entries[owner_id] = (now_s, security)

    def knows(self, owner_id: str) -> bool:
        """Whether ``get`` answers for this owner (loaded, however long ago)."""
        return owner_id in self._entries

    def get(self, owner_id: str) -> OwnerSecurity | None:
        seen = self._entries.get(owner_id)
        return None if seen is None else seen[1]
