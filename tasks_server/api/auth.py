"""Bearer key + ``X-Tasks-Owner-Id`` → the caller's owner id.

Malformed headers and unknown owners are 403; a well-formed key that is not the owner's
is 401. Key digests are cached in memory, so a request costs no database read once its
owner has been seen (on a database that several nodes share, no read for ``max_age_s``).
"""

from __future__ import annotations

import hmac
import re

from starlette.requests import Request

from ..clock import Clock
from ..errors import Throttled, Unauthenticated, WrongKey
from ..sealing import keys_match
from ..store import Store
from .buckets import TokenBuckets

_KEY = re.compile(r"^[A-Za-z0-9]{64}$")
_OWNER_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$", re.IGNORECASE)
_CACHE_LIMIT = 10_000


class Authenticator:
    """Checks owner credentials and spends the owner's request budget (requests per
    minute: the owner's own, set by an administrator, else ``default_budget``; 0 = none).

    What it read of an owner (key digest, whether disabled, budget) is kept until this
    server changes the owner (``forget``), and at most ``max_age_s`` seconds when that is
    set: on a database that several nodes share, a key rotated, an owner disabled or
    deleted through another node stops working here within that time.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock | None = None,
        default_budget: int = 0,
        max_age_s: float | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._default_budget = default_budget
        self._max_age_s = max_age_s if clock is not None else None
        self._digests: dict[str, bytes] = {}
        self._read_at: dict[str, float] = {}  # owner id → monotonic s of the digest's read
        self._verified: dict[str, str] = {}
        self._budgets: dict[str, int] = {}  # owner id → requests per minute (0 = none)
        self._spent = TokenBuckets(default_budget or 1)

    async def owner_id(self, request: Request) -> str:
        """The authenticated owner's id. Raises Unauthenticated (403) or WrongKey (401)."""
        parts = request.headers.get("authorization", "").split(" ")
        owner_id = request.headers.get("x-tasks-owner-id", "")
        if len(parts) != 2 or parts[0] != "Bearer" or not _KEY.match(parts[1]):
            raise Unauthenticated()
        if not _OWNER_ID.match(owner_id):
            raise Unauthenticated()
        digest = self._digests.get(owner_id)
        if digest is not None and self._is_stale(owner_id):
            self.forget(owner_id)
            digest = None
        if digest is None:
            digest = await self._store.owner_key_digest(owner_id)
            if digest is None:
                raise Unauthenticated()
            if len(self._digests) >= _CACHE_LIMIT:
                self._digests.clear()
                self._verified.clear()
                self._budgets.clear()
                self._read_at.clear()
            self._digests[owner_id] = digest
            if self._max_age_s is not None and self._clock is not None:
                self._read_at[owner_id] = self._clock.monotonic()
            budget = (await self._store.get_owner(owner_id)).request_budget
            self._budgets[owner_id] = self._default_budget if budget is None else budget
        # the last key that matched each owner is remembered, so a client's repeated
        # calls cost one constant-time string comparison instead of an HMAC each
        key = parts[1]
        verified = self._verified.get(owner_id)
        if verified is None or not hmac.compare_digest(verified, key):
            if not keys_match(digest, key):
                raise WrongKey()
            self._verified[owner_id] = key
        self._spend(owner_id)
        return owner_id

    def _is_stale(self, owner_id: str) -> bool:
        if self._max_age_s is None or self._clock is None:
            return False
        read_at = self._read_at.get(owner_id)
        return read_at is None or self._clock.monotonic() - read_at >= self._max_age_s

    def _spend(self, owner_id: str) -> None:
        budget = self._budgets.get(owner_id, self._default_budget)
        if budget and self._clock is not None:
            wait_s = self._spent.take(owner_id, self._clock.now_ms(), budget)
            if wait_s:
                raise Throttled(wait_s)

    def forget(self, owner_id: str) -> None:
        """Drop an owner from the cache (deleted, disabled, re-keyed or re-budgeted)."""
        self._digests.pop(owner_id, None)
        self._verified.pop(owner_id, None)
        self._budgets.pop(owner_id, None)
        self._read_at.pop(owner_id, None)
