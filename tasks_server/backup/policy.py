"""Backup policy, pure: snapshot names, retention, the backup schedule and checksum
files, all functions of their arguments."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .. import cron
from ..config import Settings
from ..errors import ConfigError

_DAY_MS = 86_400_000
_NAME = re.compile(r"(?P<stem>.+)-(?P<stamp>\d{8}T\d{6})\.(?P<ms>\d{3})Z\.db")
_CHECKSUM = re.compile(r"([0-9a-f]{64})\b")


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
class BackupSchedule:
    """When scheduled backups run: a cron expression in a zone, or every ``interval_s``."""

    cron: str | None = None
    tz: str = "UTC"
    interval_s: int = 0


def snapshot_name(stem: str, taken_at_ms: int) -> str:
    """``<stem>-YYYYMMDDTHHMMSS.mmmZ.db`` in UTC: sortable, and no colons (unlike the
    original's ISO names, which some file systems and tools reject)."""
    return f"{stem}-{stamp(taken_at_ms)}.db"


def stamp(at_ms: int) -> str:
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


def next_run_ms(schedule: BackupSchedule, after_ms: int) -> int:
    """When the next backup is due: the next cron slot, or ``interval_s`` after
    ``after_ms`` (the end of the previous run). Missed slots are never made up."""
    if schedule.cron:
        return cron_next_ms(schedule.cron, schedule.tz, after_ms)
    return after_ms + schedule.interval_s * 1000


def schedule_from(settings: Settings) -> BackupSchedule | None:
    """The backup schedule the settings ask for, or None. Raises ConfigError naming the
    variable for a cron pattern or zone that cannot be used."""
    if not settings.backup_is_scheduled:
        return None
    schedule = BackupSchedule(
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
