"""Taking backups: ``back_up`` (blocking: snapshot, verify, hash, publish, prune) and
``BackupJob``, which runs it on a clock inside the server in a worker thread, so neither
the API nor the scheduler waits on a backup."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from ..clock import Clock
from ..config import Settings
from ..store.sqlite import check_database, take_snapshot
from .policy import Retention, expired, next_run_ms, parse_snapshot, schedule_from, snapshot_name
from .snapshot import sha256_file
from .targets import LocalTarget, Target, target_from

logger = logging.getLogger(__name__)


MAX_NAP_S = 1.0  # a wall-clock jump is noticed within this
STOP_GRACE_S = 30.0  # how long stopping waits for a snapshot already being written


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
