"""Ids the stores give new rows; every Store implementation uses these, so ids look the
same whichever database holds them."""

from __future__ import annotations

import os
import secrets

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# byte → one of the 32 characters of RFC 4648 base32 (A-Z, 2-7), by its low 5 bits: 256 is
# a multiple of 32, so random bytes give uniformly random characters
_BASE32_OF_BYTE = bytes(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[n % 32] for n in range(256))


def new_owner_id(now_ms: int) -> str:
    """A ULID: 48-bit ms time and 80 random bits in Crockford base 32 (26 characters)."""
    value = (now_ms & ((1 << 48) - 1)) << 80 | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def new_task_id(now_ms: int) -> str:
    """24 characters of [0-9A-Z]: the creation ms in hex (as the original) + 13 random.

    The original used the decimal ms as the suffix, so two tasks in one ms collided
    (docs/compatibility.md#task-ids).
    """
    # 13 random base32 characters (A-Z, 2-7) carry 65 random bits; one translate of 13
    # random bytes (base64.b32encode is pure Python: several times slower)
    return f"{now_ms:011X}"[-11:] + os.urandom(13).translate(_BASE32_OF_BYTE).decode()


def new_task_ids(now_ms: int, count: int) -> list[str]:
    """``count`` ids of ``new_task_id``'s form from one read of the random source.

    os.urandom lets go of the GIL; under a busy writer thread, taking it back costs up to
    a switch interval (5 ms), so a batch reads its random bytes once, not once per id.
    """
    prefix = f"{now_ms:011X}"[-11:]
    text = os.urandom(13 * count).translate(_BASE32_OF_BYTE).decode()
    return [prefix + text[start : start + 13] for start in range(0, 13 * count, 13)]
