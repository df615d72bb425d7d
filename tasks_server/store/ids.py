"""Ids the stores give new rows; every Store implementation uses these, so ids look the
same whichever database holds them."""

from __future__ import annotations

import os
import secrets
import threading

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# byte → one of the 32 characters of RFC 4648 base32 (A-Z, 2-7), by its low 5 bits: 256 is
# a multiple of 32, so random bytes give uniformly random characters
_BASE32_OF_BYTE = bytes(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[n % 32] for n in range(256))


def new_owner_id(now_ms: int) -> str:
    """A ULID: 48-bit ms time and 80 random bits in Crockford base 32 (26 characters)."""
    value = (now_ms & ((1 << 48) - 1)) << 80 | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


class _RandomText:
    """Random base32 characters (A-Z, 2-7) cut from a buffer refilled from os.urandom.

    os.urandom lets go of the GIL; under a busy writer thread, taking it back costs up to
    a switch interval, and a registration paid that once per request (5 % of the event
    loop's time at 32 connections). The buffer pays it once per ``_REFILL`` characters.
    """

    _REFILL = 13 * 512

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Start from an empty buffer, with a new lock (in a forked child, another thread
        of the parent may have held the old one)."""
        self._text = ""
        self._at = 0
        self._lock = threading.Lock()

    def take(self, count: int) -> str:
        with self._lock:
            if self._at + count > len(self._text):
                size = max(self._REFILL, count)
                self._text = os.urandom(size).translate(_BASE32_OF_BYTE).decode()
                self._at = 0
            start = self._at
            self._at = start + count
            return self._text[start : self._at]


_random_text = _RandomText()
# a forked child must not hand out the characters its parent hands out too
os.register_at_fork(after_in_child=_random_text.forget)


def new_task_id(now_ms: int) -> str:
    """24 characters of [0-9A-Z]: the creation ms in hex (as the original) + 13 random.

    The original used the decimal ms as the suffix, so two tasks in one ms collided
    (docs/compatibility.md#task-ids). The 13 random base32 characters carry 65 random bits.
    """
    return f"{now_ms:011X}"[-11:] + _random_text.take(13)


def new_task_ids(now_ms: int, count: int) -> list[str]:
    """``count`` ids of ``new_task_id``'s form."""
    prefix = f"{now_ms:011X}"[-11:]
    text = _random_text.take(13 * count)
    return [prefix + text[start : start + 13] for start in range(0, 13 * count, 13)]
