"""Backups and restore: consistent online snapshots of the SQLite file, kept in a local
directory or an S3-compatible bucket with a SHA-256 checksum beside each, pruned by retention.

Naming, retention and the schedule are pure functions of their arguments; ``back_up`` and
``restore`` are the blocking shells; ``BackupJob`` runs ``back_up`` on a clock inside the
server, always in a worker thread, so neither the API nor the scheduler waits on a backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from . import cron
from .clock import Clock
from .config import Settings
from .errors import BackupError, ConfigError
from .store.migrate import latest_version

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

logger = logging.getLogger(__name__)

MAX_NAP_S = 1.0  # a wall-clock jump is noticed within this
STOP_GRACE_S = 30.0  # how long stopping waits for a snapshot already being written
_DAY_MS = 86_400_000
_CHUNK = 1 << 20
_NAME = re.compile(r"(?P<stem>.+)-(?P<stamp>\d{8}T\d{6})\.(?P<ms>\d{3})Z\.db")
_CHECKSUM = re.compile(r"([0-9a-f]{64})\b")


# -- pure: names, retention, schedule ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    name: str
    taken_at_ms: int


@dataclass(frozen=True, slots=True)
class Retention:
    """Which snapshots to keep: the newest ``keep_last``, and those younger than
    ``keep_days``; 0 turns a rule off."""

    keep_last: int = 0
    keep_days: int = 0


@dataclass(frozen=True, slots=True)
class Schedule:
    """When scheduled backups run: a cron expression in a zone, or every ``interval_s``."""

    cron: str | None = None
    tz: str = "UTC"
    interval_s: int = 0


def snapshot_name(stem: str, taken_at_ms: int) -> str:
    """``<stem>-YYYYMMDDTHHMMSS.mmmZ.db`` in UTC: sortable, and no colons (unlike the
    original's ISO names, which some file systems and tools reject)."""
    return f"{stem}-{_stamp(taken_at_ms)}.db"


def _stamp(at_ms: int) -> str:
    moment = datetime.fromtimestamp(at_ms // 1000, UTC)
    return f"{moment:%Y%m%dT%H%M%S}.{at_ms % 1000:03d}Z"


def parse_snapshot(stem: str, name: str) -> Snapshot | None:
    """The snapshot ``name`` stands for, or None when it is not one of ``stem``'s."""
    match = _NAME.fullmatch(name)
    if match is None or match["stem"] != stem:
        return None
    moment = datetime.strptime(match["stamp"], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return Snapshot(name, int(moment.timestamp()) * 1000 + int(match["ms"]))


def expired(snapshots: Sequence[Snapshot], now_ms: int, retention: Retention) -> list[Snapshot]:
    """The snapshots retention lets go, oldest first.

    A snapshot stays when any enabled rule keeps it (as restic's ``--keep-last`` and
    ``--keep-within``). With no rule nothing expires, and the newest snapshot never does,
    so a server that was down for longer than ``keep_days`` still keeps its last backup.
    """
    if not (retention.keep_last or retention.keep_days):
        return []
    newest_first = sorted(snapshots, key=lambda s: s.taken_at_ms, reverse=True)
    cutoff_ms = now_ms - retention.keep_days * _DAY_MS
    doomed = [
        snapshot
        for rank, snapshot in enumerate(newest_first)
        if rank > 0
        and not (retention.keep_last and rank < retention.keep_last)
        and not (retention.keep_days and snapshot.taken_at_ms >= cutoff_ms)
    ]
    return doomed[::-1]


def cron_next_ms(expr: str, tz: str, after_ms: int) -> int:
    """The first instant strictly after ``after_ms`` (epoch ms) that matches ``expr`` in
    zone ``tz``, by the server's cron rules (``cron.py``: 5 fields, 6 with seconds first as
    in croner, the original's library, macros; its daylight-saving policy).

    Raises ValueError for an expression that cannot be read or never matches.
    """
    following = cron.next_after(cron.parse(expr), after_ms, tz)
    if following is None:
        raise ValueError(f"{expr!r} never matches a date")
    return following


def next_run_ms(schedule: Schedule, after_ms: int) -> int:
    """When the next backup is due: the next cron slot, or ``interval_s`` after
    ``after_ms`` (the end of the previous run). Missed slots are never made up."""
    if schedule.cron:
        return cron_next_ms(schedule.cron, schedule.tz, after_ms)
    return after_ms + schedule.interval_s * 1000


def schedule_from(settings: Settings) -> Schedule | None:
    """The backup schedule the settings ask for, or None. Raises ConfigError naming the
    variable for a cron pattern or zone that cannot be used."""
    if not settings.backup_is_scheduled:
        return None
    schedule = Schedule(
        settings.backup_cron, settings.backup_cron_tz or settings.tz, settings.backup_interval_s
    )
    if schedule.cron:
        try:
            cron.check_zone(schedule.tz)
        except ValueError as exc:
            raise ConfigError("BACKUP_CRON_TZ_SQLITE", schedule.tz, str(exc)) from exc
        try:
            cron_next_ms(schedule.cron, schedule.tz, 0)
        except ValueError as exc:
            raise ConfigError("BACKUP_CRON_PATTERN_SQLITE", schedule.cron, str(exc)) from exc
    return schedule


def checksum_line(checksum: str, name: str) -> str:
    """The ``.sha256`` file's text, in ``sha256sum`` format so ``sha256sum -c`` checks it."""
    return f"{checksum}  {name}\n"


def parse_checksum(text: str) -> str | None:
    match = _CHECKSUM.match(text.strip().lower())
    return match[1] if match else None


# -- blocking shells: snapshot, verify, hash ---------------------------------------------


def take_snapshot(source: Path, dest: Path) -> None:
    """Copy the database at ``source`` into the new file ``dest`` as of one instant, while
    other connections keep writing.

    The whole copy is one backup step, hence one read transaction: it holds every
    transaction committed before it began and, in WAL mode, writers carry on beside it. (A
    copy in several steps restarts whenever another connection writes, so on a busy
    database it might never finish.) The copy is switched to rollback-journal mode, so it
    is one self-contained file. Raises BackupError when ``source`` is not there.
    """
    if not source.is_file():
        raise BackupError(f"no database at {source}")
    # mode=rw: never create an empty database where a real one was expected
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=rw", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def check_database(path: Path) -> None:
    """Raise BackupError unless ``path`` opens, passes ``PRAGMA integrity_check`` and has a
    tasks-server schema this version can run (1 ≤ user_version ≤ the latest migration)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a readable SQLite database: {exc}") from exc
    finally:
        conn.close()
    if problems != ["ok"]:
        raise BackupError(f"{path} fails the integrity check: {'; '.join(problems[:3])}")
    if not 1 <= version <= latest_version():
        raise BackupError(f"{path} is not a tasks-server database this version can open")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    _fsync(partial)
    partial.replace(path)


# -- targets ------------------------------------------------------------------------------


class Target(Protocol):
    """Where snapshots are kept. Every method blocks; call them from a worker thread."""

    staging: Path  # a directory where a snapshot is written before it is published

    def publish(self, snapshot: Path, name: str, checksum: str) -> str:
        """Store ``snapshot`` as ``name`` with its checksum beside it (checksum first, so a
        snapshot that is visible always has one); returns where it went."""

    def names(self) -> list[str]:
        """Every file name kept here (snapshots and checksums, possibly others)."""

    def delete(self, names: Sequence[str]) -> None:
        """Remove these snapshots and their checksums."""

    def fetch(self, name: str, directory: Path) -> tuple[Path, str | None]:
        """Bring snapshot ``name`` into ``directory``; returns the file and the recorded
        checksum (None when no checksum is kept beside it)."""


class LocalTarget:
    """A directory, created on first use. Publishing renames within it, so a snapshot
    appears whole or not at all."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.staging = directory

    def publish(self, snapshot: Path, name: str, checksum: str) -> str:
        final = self.directory / name
        _write_atomically(final.with_name(f"{name}.sha256"), checksum_line(checksum, name))
        _fsync(snapshot)
        snapshot.replace(final)
        _fsync(self.directory)
        return str(final)

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return [entry.name for entry in self.directory.iterdir() if entry.is_file()]

    def delete(self, names: Sequence[str]) -> None:
        for name in names:
            (self.directory / name).unlink(missing_ok=True)
            (self.directory / f"{name}.sha256").unlink(missing_ok=True)

    def fetch(self, name: str, directory: Path) -> tuple[Path, str | None]:
        return _local_snapshot(self.directory / name)


def _local_snapshot(path: Path) -> tuple[Path, str | None]:
    if not path.is_file():
        raise BackupError(f"no snapshot at {path}")
    sums = path.with_name(f"{path.name}.sha256")
    return path, parse_checksum(sums.read_text()) if sums.is_file() else None


class S3Target:
    """A bucket and key prefix on any S3-compatible service. Uploads above the threshold
    are multipart; the key is ``<prefix>/<name>``."""

    def __init__(
        self, client: S3Client, bucket: str, prefix: str, staging: Path, part_bytes: int
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.staging = staging
        self.part_bytes = part_bytes

    def key(self, name: str) -> str:
        """A bare name lives under the prefix; anything with a ``/`` is a full key."""
        return name if "/" in name or not self.prefix else f"{self.prefix}/{name}"

    def publish(self, snapshot: Path, name: str, checksum: str) -> str:
        from boto3.s3.transfer import TransferConfig

        key = self.key(name)
        body = checksum_line(checksum, name).encode()
        self.client.put_object(
            Bucket=self.bucket, Key=f"{key}.sha256", Body=body, ContentType="text/plain"
        )
        transfer = TransferConfig(
            multipart_threshold=self.part_bytes, multipart_chunksize=self.part_bytes
        )
        extra = {"ContentType": "application/vnd.sqlite3", "Metadata": {"sha256": checksum}}
        self.client.upload_file(str(snapshot), self.bucket, key, ExtraArgs=extra, Config=transfer)
        return f"s3://{self.bucket}/{key}"

    def names(self) -> list[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start, Delimiter="/"
        )
        return [item["Key"][len(start) :] for page in pages for item in page.get("Contents", [])]

    def delete(self, names: Sequence[str]) -> None:
        keys = [key for name in names for key in (self.key(name), f"{self.key(name)}.sha256")]
        for first in range(0, len(keys), 1000):  # the API's limit per request
            objects: list[ObjectIdentifierTypeDef] = [
                {"Key": key} for key in keys[first : first + 1000]
            ]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})

    def fetch(self, name: str, directory: Path) -> tuple[Path, str | None]:
        key = self.key(name)
        dest = directory / key.rsplit("/", 1)[-1]
        try:
            self.client.download_file(self.bucket, key, str(dest))
        except self.client.exceptions.ClientError as exc:
            raise BackupError(f"cannot fetch s3://{self.bucket}/{key}: {exc}") from exc
        try:
            sums = self.client.get_object(Bucket=self.bucket, Key=f"{key}.sha256")
        except self.client.exceptions.NoSuchKey:
            return dest, None
        return dest, parse_checksum(sums["Body"].read().decode(errors="replace"))


def s3_client(settings: Settings) -> S3Client:
    """A client for the configured endpoint. Credentials go to botocore only; botocore's
    own DEBUG output carries request headers (key id, session token), so its loggers are
    held at INFO whatever LOG_LEVEL says."""
    import boto3
    from botocore.config import Config

    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        quiet = logging.getLogger(name)
        quiet.setLevel(max(quiet.level, logging.INFO))
    config = Config(
        s3={"addressing_style": "path" if settings.s3_path_style else "virtual"},
        retries={"mode": "standard", "max_attempts": 5},
        # many S3-compatible services reject the CRC checksums boto3 sends by default
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        aws_session_token=settings.s3_session_token,
        region_name=settings.s3_region or "us-east-1",
        config=config,
    )


def target_from(settings: Settings) -> Target:
    """The configured target. Raises ConfigError when it is not configured."""
    if settings.backup_method == "OBJECT_STORAGE":
        if not settings.s3_bucket:
            raise ConfigError("BACKUP_OBJECT_STORAGE_BUCKET_NAME", None, "is not set")
        return S3Target(
            s3_client(settings),
            settings.s3_bucket,
            settings.s3_path,
            settings.database_path.parent,
            settings.s3_multipart_threshold_bytes,
        )
    if not settings.backup_dir:
        raise ConfigError("BACKUP_PATH_DIR_SQLITE", None, "is not set (or use backup --to)")
    return LocalTarget(Path(settings.backup_dir))


# -- back up ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    """One snapshot written: where, its checksum and size, and what retention removed."""

    name: str
    location: str
    checksum: str
    size_bytes: int
    removed: tuple[str, ...] = ()


def back_up(
    source: Path, target: Target, name: str, now_ms: int, retention: Retention | None = None
) -> Published:
    """Snapshot ``source``, check it, publish it to ``target`` as ``name`` with its
    checksum, then apply ``retention`` to the snapshots of the same stem. Blocking.

    Raises BackupError, OSError, sqlite3.Error or a botocore error; nothing partial is left
    published.
    """
    target.staging.mkdir(parents=True, exist_ok=True)
    partial = target.staging / f".{name}.partial"
    partial.unlink(missing_ok=True)
    try:
        take_snapshot(source, partial)
        check_database(partial)
        checksum, size = sha256_file(partial), partial.stat().st_size
        location = target.publish(partial, name, checksum)
    finally:
        partial.unlink(missing_ok=True)
    removed: list[str] = []
    if retention is not None:
        stem = source.stem
        kept = [s for n in target.names() if (s := parse_snapshot(stem, n)) is not None]
        removed = [snapshot.name for snapshot in expired(kept, now_ms, retention)]
        target.delete(removed)
    return Published(name, location, checksum, size, tuple(removed))


class BackupJob:
    """Backs up the server's database on its schedule, inside the server.

    The snapshot, the checksum and the upload run in a worker thread; runs never overlap;
    a failed run is logged (``failures`` counts them) and the next slot still runs.
    ``idle`` is set while the job waits for its next slot.
    """

    def __init__(self, settings: Settings, clock: Clock, target: Target | None = None) -> None:
        self._source = settings.database_path
        self._clock = clock
        self._schedule = schedule_from(settings)
        self._target = target if target is not None else target_from(settings)
        self._retention = Retention(settings.backup_keep_last, settings.backup_keep_days)
        self.idle = asyncio.Event()
        self.completed = 0
        self.failures = 0
        self.last: Published | None = None
        self.next_run_ms: int | None = None

    async def run_once(self) -> Published:
        """One backup now, named after the current wall time."""
        now_ms = self._clock.now_ms()
        name = snapshot_name(self._source.stem, now_ms)
        logger.info("backup %s started", name)
        started = self._clock.monotonic()
        work = asyncio.ensure_future(
            asyncio.to_thread(back_up, self._source, self._target, name, now_ms, self._retention)
        )
        try:
            published = await asyncio.shield(work)
        except asyncio.CancelledError:
            # a thread cannot be interrupted: let it finish, so no partial file outlives us
            await asyncio.wait([work], timeout=STOP_GRACE_S)
            work.add_done_callback(_log_late_failure)
            raise
        self.completed += 1
        self.last = published
        logger.info(
            "backup %s written to %s (%d bytes, %.2f s, %d expired)",
            name,
            published.location,
            published.size_bytes,
            self._clock.monotonic() - started,
            len(published.removed),
        )
        return published

    async def run(self) -> None:
        """Run backups at every slot of the schedule until cancelled."""
        if self._schedule is None:
            return
        self.next_run_ms = next_run_ms(self._schedule, self._clock.now_ms())
        while True:
            now_ms = self._clock.now_ms()
            if now_ms < self.next_run_ms:
                self.idle.set()
                await self._clock.sleep(min((self.next_run_ms - now_ms) / 1000, MAX_NAP_S))
                continue
            self.idle.clear()
            try:
                await self.run_once()
            except Exception:
                self.failures += 1
                logger.exception("backup failed; the next one is still scheduled")
            self.next_run_ms = next_run_ms(self._schedule, self._clock.now_ms())


def _log_late_failure(work: asyncio.Future[Published]) -> None:
    if not work.cancelled() and work.exception() is not None:
        logger.error("backup failed while stopping", exc_info=work.exception())


# -- restore ------------------------------------------------------------------------------


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


@contextlib.contextmanager
def _exclusive(database: Path) -> Iterator[None]:
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


_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def _move_aside(database: Path, now_ms: int) -> Path | None:
    """Rename the database and its WAL files together (so the old database stays whole)
    to ``<db>.replaced-<stamp>``; None when there was nothing to move."""
    present = [s for s in _SIDE_FILES if Path(f"{database}{s}").exists()]
    if not present:
        return None
    aside = database.with_name(f"{database.name}.replaced-{_stamp(now_ms)}")
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
    with _exclusive(database):
        if any(Path(f"{database}{s}").exists() for s in _SIDE_FILES) and not force:
            raise BackupError(f"{database} exists; pass --force to replace it (kept aside)")
        try:
            checksum = _fetch_verified(source, target, database.stem, partial)
            replaced = _move_aside(database, now_ms)
            partial.replace(database)
            _fsync(database.parent)
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
    _fsync(dest)
    return actual


def _locate(
    source: str, target: Target | None, stem: str, directory: Path
) -> tuple[Path, str | None]:
    if Path(source).is_file():
        return _local_snapshot(Path(source))
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


# -- entry points for the CLI -------------------------------------------------------------


def back_up_now(settings: Settings, now_ms: int, to: Path | None = None) -> Published:
    """One snapshot now: into ``to`` (an existing directory, else that file) without
    retention, or to the configured target with its retention. Raises ConfigError when
    there is no ``to`` and no target is configured."""
    source = settings.database_path
    name = snapshot_name(source.stem, now_ms)
    if to is None:
        retention = Retention(settings.backup_keep_last, settings.backup_keep_days)
        return back_up(source, target_from(settings), name, now_ms, retention)
    if to.is_dir():
        return back_up(source, LocalTarget(to), name, now_ms)
    return back_up(source, LocalTarget(to.parent), to.name, now_ms)


def restore_now(settings: Settings, source: str, now_ms: int, force: bool = False) -> Restored:
    """``restore`` into the configured database, looking up names in the configured
    target when there is one."""
    unset = settings.backup_method == "LOCAL" and not settings.backup_dir
    target = None if unset else target_from(settings)
    return restore(source, settings.database_path, target, now_ms, force)
