"""Restore: fetch a snapshot, verify its checksum, integrity and schema, and put it in
place of a database no server holds (the old one is moved aside, never deleted)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from ..errors import BackupError
from ..store.sqlite import check_database, exclusive_lock
from .policy import parse_snapshot, stamp
from .snapshot import fsync_file, sha256_file
from .targets import Target, local_snapshot, target_from

_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def _move_aside(database: Path, now_ms: int) -> Path | None:
    """Rename the database and its WAL files together (so the old database stays whole)
    to ``<db>.replaced-<stamp>``; None when there was nothing to move."""
    present = [s for s in _SIDE_FILES if Path(f"{database}{s}").exists()]
    if not present:
        return None
    aside = database.with_name(f"{database.name}.replaced-{stamp(now_ms)}")
    for suffix in present:
        Path(f"{database}{suffix}").rename(f"{aside}{suffix}")
    return aside


@dataclass(frozen=True, slots=True)
class Restored:
    source: str
    database: Path
    checksum: str
    replaced: Path | None  # where the previous database was moved, if there was one


def restore(
    source: str, database: Path, target: Target | None, now_ms: int, force: bool = False
) -> Restored:
    """Install snapshot ``source`` as ``database``. Blocking.

    ``source`` is a local file, else a snapshot name or key in ``target``, or ``latest``
    (the newest snapshot of this database there). The copy must match its recorded
    checksum and pass the integrity check before anything is replaced. A database in use
    by a running server is never replaced; an existing one only with ``force``, and it is
    then kept beside it (``Restored.replaced``). Raises BackupError saying why.
    """
    partial = database.with_name(f".{database.name}.restoring")
    with exclusive_lock(database):
        if any(Path(f"{database}{s}").exists() for s in _SIDE_FILES) and not force:
            raise BackupError(f"{database} exists; pass --force to replace it (kept aside)")
        try:
            checksum = _fetch_verified(source, target, database.stem, partial)
            replaced = _move_aside(database, now_ms)
            partial.replace(database)
            fsync_file(database.parent)
        finally:
            partial.unlink(missing_ok=True)
    return Restored(source, database, checksum, replaced)


def _fetch_verified(source: str, target: Target | None, stem: str, dest: Path) -> str:
    """Bring ``source`` to ``dest`` and check it there; returns its checksum."""
    fetch_dir = dest.with_name(f"{dest.name}.d")
    fetch_dir.mkdir(exist_ok=True)
    try:
        path, recorded = _locate(source, target, stem, fetch_dir)
        if path.parent == fetch_dir:
            path.replace(dest)
        else:
            shutil.copyfile(path, dest)
    finally:
        shutil.rmtree(fetch_dir, ignore_errors=True)
    if recorded is None:
        raise BackupError(f"{source} has no checksum beside it (<name>.sha256); not restored")
    actual = sha256_file(dest)
    if actual != recorded:
        raise BackupError(f"{source} does not match its checksum (sha256 {actual} ≠ {recorded})")
    check_database(dest)
    fsync_file(dest)
    return actual


def _locate(
    source: str, target: Target | None, stem: str, directory: Path
) -> tuple[Path, str | None]:
    if Path(source).is_file():
        return local_snapshot(Path(source))
    if target is None:
        raise BackupError(f"no file {source} and no backup target configured to look in")
    if source == "latest":
        return target.fetch(_latest(target, stem), directory)
    return target.fetch(source, directory)


def _latest(target: Target, stem: str) -> str:
    snapshots = [s for n in target.names() if (s := parse_snapshot(stem, n)) is not None]
    if not snapshots:
        raise BackupError(f"the backup target holds no snapshot of {stem}")
    return max(snapshots, key=lambda s: s.taken_at_ms).name


def restore_now(settings: Settings, source: str, now_ms: int, force: bool = False) -> Restored:
    """``restore`` into the configured database, looking up names in the configured
    target when there is one."""
    unset = settings.backup_method == "LOCAL" and not settings.backup_dir
    target = None if unset else target_from(settings)
    return restore(source, settings.database_path, target, now_ms, force)
