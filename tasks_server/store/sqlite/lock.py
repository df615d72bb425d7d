"""The database lock: a server holds a shared ``flock`` on ``<db>.lock`` while it
serves, and restore takes it exclusively, so a served database is never replaced."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ...errors import BackupError, ConfigError


class DatabaseLock:
    """``<db>.lock``: a running server holds a shared flock on it, and restore takes it
    exclusively, so a restore never replaces a database under a server and a server never
    opens one halfway through a restore. The kernel drops a flock when its process dies, so
    a crash leaves no stale lock."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(f"{database.name}.lock")
        self._file: IO[bytes] | None = None

    def acquire_shared(self) -> None:
        """Block until no restore is running, then hold the lock shared."""
        fcntl.flock(self._open(), fcntl.LOCK_SH)

    def try_exclusive(self) -> bool:
        """Take the lock exclusively if no server (and no restore) holds it."""
        try:
            fcntl.flock(self._open(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            return False
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        return self._file


class ServeLock:
    """``<db>.serve.lock``, held exclusively by the one server that serves the database:
    a second ``serve`` on the same file is refused instead of starting beside it. Raises
    ConfigError naming PATH_SQLITE when another process holds it."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = database.with_name(f"{database.name}.serve.lock")
        self._file: IO[bytes] | None = None

    def __enter__(self) -> ServeLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = self.path.open("ab")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            raise ConfigError(
                "PATH_SQLITE",
                str(self.database),
                f"another tasks-server already serves this database ({self.path} is "
                "locked); stop it first, or give this one another database",
            ) from None
        self._file = file
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@contextlib.contextmanager
def exclusive_lock(database: Path) -> Iterator[None]:
    lock = DatabaseLock(database)
    if not lock.try_exclusive():
        raise BackupError(
            f"{database} is in use by a running tasks-server ({lock.path} is locked); "
            "stop the server, then restore"
        )
    try:
        yield
    finally:
        lock.release()
