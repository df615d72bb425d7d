"""Ids the stores give new rows; every Store implementation uses these, so ids look the
same whichever database holds them."""

from __future__ import annotations

import base64
import os
import secrets

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_owner_id(now_ms: int) -> str:
    """A ULID: 48-bit ms time and 80 random bits in Crockford base 32 (26 characters)."""
    value = (now_ms & ((1 << 48) - 1)) << 80 | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def new_task_id(now_ms: int) -> str:
    """24 characters of [0-9A-Z]: the creation ms in hex (as the original) + 13 random.

    The original used the decimal ms as the suffix, so two tasks in one ms collided
    (docs/compatibility.md#task-ids).
    """
    # base32 (A-Z, 2-7) of 10 random bytes: 13 characters carry 65 random bits
    return f"{now_ms:011X}"[-11:] + base64.b32encode(os.urandom(10))[:13].decode()
