"""Owner keys as handed out: 64 characters from the operating system's CSPRNG."""

from __future__ import annotations

import secrets
import string

_KEY_ALPHABET = string.digits + string.ascii_letters


def new_owner_key() -> str:
    """64 characters of [0-9A-Za-z] (about 381 bits)."""
    return "".join(secrets.choice(_KEY_ALPHABET) for _ in range(64))
