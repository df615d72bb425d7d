"""Which key seals secrets at rest: ``CIPHER_KEY`` when it is a real key, else a random
key generated into a file beside the database on first start.

An empty or example ``CIPHER_KEY`` protected nothing (anyone could open the sealed
values with it), so the server refuses one unless the key file exists.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path

from .errors import ConfigError

logger = logging.getLogger(__name__)

MIN_KEY_CHARS = 16
# values from examples and documentation: they are public, so they protect nothing
EXAMPLE_KEYS = frozenset(
    {"", "change-me", "changeme", "change_me", "secret", "example", "cipher-key", "your-key"}
)


def key_file_path(database: Path) -> Path:
    """``<database>.key``: beside the database, so a copy of the directory keeps both."""
    return database.with_name(database.name + ".key")


def is_example_key(value: str) -> bool:
    return value.strip().lower() in EXAMPLE_KEYS


def resolve(configured: str, database: Path) -> str:
    """The cipher key to use. A real ``CIPHER_KEY`` wins; an empty or example one means
    the key file, which is generated (mode 0600) when neither it nor the database exists.

    Raises ConfigError naming CIPHER_KEY for a key that is too short, or an empty or
    example key beside an existing database without its key file.
    """
    if configured and not is_example_key(configured):
        if len(configured) < MIN_KEY_CHARS:
            raise ConfigError(
                "CIPHER_KEY",
                "***",
                f"must be at least {MIN_KEY_CHARS} characters (or leave it empty to use "
                "a generated key file)",
            )
        return configured
    path = key_file_path(database)
    if path.is_file():
        return read_key_file(path)
    if database.exists():
        raise ConfigError(
            "CIPHER_KEY",
            "***",
            f"is empty or an example value and {path} does not exist, but {database} does: "
            "set CIPHER_KEY to the key the database was sealed with (then move to a real "
            "key with `tasks-server rotate-key`), or restore the key file",
        )
    key = write_key_file(path)
    logger.warning(
        "CIPHER_KEY is %s: generated a random key into %s (mode 0600). Keep that file with "
        "the database and its backups: without it the sealed secrets cannot be read.",
        "empty" if not configured else "an example value",
        path,
    )
    return key


def shared(configured: str) -> str:
    """The cipher key of nodes sharing a PostgreSQL database: ``CIPHER_KEY`` itself, the
    same on every node. No key file can be generated there (each node would make its
    own), so an empty, example or short key is refused.

    Raises ConfigError naming CIPHER_KEY."""
    if not configured or is_example_key(configured) or len(configured) < MIN_KEY_CHARS:
        raise ConfigError(
            "CIPHER_KEY",
            "***",
            f"must be a real key of {MIN_KEY_CHARS}+ characters, the same on every node, "
            "when DATABASE_URL is a PostgreSQL database (no key file is generated there); "
            "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
        )
    return configured


def new_key() -> str:
    """256 random bits, as 43 URL-safe characters."""
    return secrets.token_urlsafe(32)


def write_key_file(path: Path, key: str | None = None) -> str:
    """Write ``key`` (a new one by default) into ``path``, readable by its owner only;
    an existing file is replaced atomically."""
    key = key or new_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (key + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    return key


def read_key_file(path: Path) -> str:
    key = path.read_text().strip()
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(str(path), "***", f"holds fewer than {MIN_KEY_CHARS} characters")
    if path.stat().st_mode & 0o077:
        logger.warning("%s can be read by other users: chmod 600 it", path)
    return key


def rotate(configured: str, database: Path, new_key_file: Path | None) -> str:
    """Re-seal every value of the database with a new key; returns what to do next.

    The current key is ``configured`` (any value, even an example one: rotating away
    from it is the point), else the key file, else the empty key of old databases. The
    new key comes from ``new_key_file`` or is generated into the key file, which is only
    replaced once the database is re-sealed. Raises ConfigError for a wrong current key
    or a weak new one, BackupError while a server holds the database.
    """
    from .store.sqlite.lock import exclusive_lock

    if not database.is_file():
        raise ConfigError("PATH_SQLITE", str(database), "no database to re-seal")
    path = key_file_path(database)
    old = configured or (read_key_file(path) if path.is_file() else "")
    pending = path.with_name(path.name + ".new")
    with exclusive_lock(database):
        if new_key_file is not None:
            new = _read_new_key(new_key_file)
        else:
            new = write_key_file(pending)  # on disk before any value is sealed with it
        written = asyncio.run(_reseal(database, old, new))
    if new_key_file is not None:
        return f"re-sealed {written} values: set CIPHER_KEY to the new key before starting"
    os.replace(pending, path)
    then = " Unset CIPHER_KEY: the key file is used when it is empty." if configured else ""
    return f"re-sealed {written} values; the new key is in {path}.{then}"


def rotate_shared(configured: str, url: str, new_key_file: Path | None) -> str:
    """Re-seal a PostgreSQL database that nodes share with the key in ``new_key_file``;
    returns what to do next. The current key is ``configured`` (any value: rotating away
    from it is the point). Nodes take their key from ``CIPHER_KEY`` (no key file is
    generated there), so the new key must be given. Raises ConfigError for a missing or
    weak new key or a wrong current one, PreconditionFailed while a node is connected."""
    from .sealing import Sealer
    from .store.postgres.sealed import rotate_key

    if new_key_file is None:
        raise ConfigError(
            "--new-key-file",
            "",
            "is required with DATABASE_URL: every node reads its key from CIPHER_KEY, so "
            "make one (python -c 'import secrets; print(secrets.token_urlsafe(32))'), keep "
            "it in a file and pass that file",
        )
    new = _read_new_key(new_key_file)
    written = asyncio.run(rotate_key(url, Sealer(configured), Sealer(new)))
    return (
        f"re-sealed {written} values: set CIPHER_KEY to the new key on every node before "
        "starting it"
    )


def _read_new_key(path: Path) -> str:
    new = path.read_text().strip()
    if len(new) < MIN_KEY_CHARS or is_example_key(new):
        raise ConfigError("--new-key-file", "***", f"needs {MIN_KEY_CHARS}+ characters")
    return new


async def _reseal(database: Path, old: str, new: str) -> int:
    from .sealing import Sealer
    from .store.sqlite import SqliteStore

    store = SqliteStore(database, Sealer(old))
    try:
        await store.open()
        return await store.reseal(Sealer(new))
    finally:
        await store.close()
