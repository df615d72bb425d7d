"""Backups and restore: pure naming, retention and schedules; both targets (a directory and
a real S3-compatible server in a subprocess) through one contract; snapshots taken while the
API writes; the scheduled job on a fake clock; restore refusals; and a restored server that
runs the pending tasks it contains."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tasks_server.app import Server, build
from tasks_server.backup.job import BackupJob, back_up, back_up_now
from tasks_server.backup.policy import (
    BackupSchedule,
    Retention,
    Snapshot,
    checksum_line,
    cron_next_ms,
    next_run_ms,
    parse_checksum,
    parse_snapshot,
    schedule_from,
    snapshot_name,
)
from tasks_server.backup.policy import (
    expired as expired_snapshots,
)
from tasks_server.backup.restore import restore, restore_now
from tasks_server.backup.snapshot import sha256_file
from tasks_server.backup.targets import LocalTarget, S3Target, Target, target_from
from tasks_server.config import Settings, load
from tasks_server.errors import BackupError, ConfigError
from tasks_server.store.sqlite import check_database
from tests.conftest import OwnerAuth, ServerFactory, client_for, register_owner, register_task
from tests.support.clock import START_MS, FakeClock
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, S3Server
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until

DAY_MS = 86_400_000
SESSION_TOKEN = "test-session-token-do-not-log"
FAR = {"executionDelay": DAY_MS}  # registered, never due during a test


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    name = f"backups-{uuid.uuid4().hex[:12]}"  # one bucket per test: no shared state
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_settings(settings: Settings, s3_server: S3Server, bucket: str) -> Settings:
    return dataclasses.replace(
        settings,
        backup_method="OBJECT_STORAGE",
        s3_endpoint=s3_server.endpoint,
        s3_access_key=ACCESS_KEY,
        s3_secret_key=SECRET_KEY,
        s3_session_token=SESSION_TOKEN,
        s3_bucket=bucket,
        s3_path="nightly/tasks/",
    )


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "local":
        return LocalTarget(tmp_path / "backups")
    s3 = request.getfixturevalue("s3_settings")
    made = target_from(s3)
    assert isinstance(made, S3Target)
    return made


@contextlib.asynccontextmanager
async def running(settings: Settings, clock: FakeClock) -> AsyncIterator[Server]:
    """A server that this test stops when it chooses (make_server stops at the end)."""
    server = build(settings, clock)
    async with server.app.router.lifespan_context(server.app):
        yield server


def task_ids(database: Path) -> set[str]:
    conn = sqlite3.connect(database)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {row[0] for row in conn.execute("SELECT id FROM task")}
    finally:
        conn.close()


def make_database(path: Path, filler_bytes: int = 0) -> Path:
    """A migrated tasks database, padded with ``filler_bytes`` of random data."""
    from tasks_server.store.migrate import migrate

    conn = sqlite3.connect(path)
    try:
        migrate(conn)
        if filler_bytes:
            conn.execute("CREATE TABLE filler (blob BLOB)")
            for _ in range(filler_bytes // 1_000_000):
                conn.execute("INSERT INTO filler VALUES (randomblob(1000000))")
            conn.commit()
    finally:
        conn.close()
    return path


# -- pure: names, retention, schedules, checksums -------------------------------------------------


def test_snapshot_names_are_utc_sortable_and_parse_back() -> None:
    name = snapshot_name("tasks", START_MS + 1_234)
    assert name == "tasks-20260101T000001.234Z.db"
    assert ":" not in name
    assert parse_snapshot("tasks", name) == Snapshot(name, START_MS + 1_234)
    later = snapshot_name("tasks", START_MS + DAY_MS)
    assert sorted([later, name]) == [name, later]


@pytest.mark.parametrize(
    "name",
    [
        "tasks-20260101T000001.234Z.db.sha256",
        "other-20260101T000001.234Z.db",
        "tasks-2026-01-01T00:00:01.234Z.db.tar.gz",  # the original's archives
        ".tasks-20260101T000001.234Z.db.partial",
        "tasks.db",
    ],
)
def test_other_files_are_not_snapshots(name: str) -> None:
    assert parse_snapshot("tasks", name) is None


def snaps(*days_ago: float) -> list[Snapshot]:
    now = START_MS + 30 * DAY_MS
    return [Snapshot(f"s{d}", round(now - d * DAY_MS)) for d in days_ago]


NOW = START_MS + 30 * DAY_MS


@pytest.mark.parametrize(
    ("days_ago", "retention", "expired"),
    [
        ((0, 1, 2, 3), Retention(), []),
        ((0, 1, 2, 3), Retention(keep_last=2), ["s3", "s2"]),
        ((3, 0, 2, 1), Retention(keep_last=2), ["s3", "s2"]),  # order of listing is irrelevant
        ((0, 1, 2, 3), Retention(keep_last=10), []),
        ((0, 1, 2.5, 3), Retention(keep_days=2), ["s3", "s2.5"]),
        ((0, 2, 3), Retention(keep_days=2), ["s3"]),  # exactly keep_days old stays
        ((0, 1, 2, 3, 4), Retention(keep_last=1, keep_days=2), ["s4", "s3"]),  # either rule keeps
        ((0, 1, 2, 3, 4), Retention(keep_last=4, keep_days=1), ["s4"]),
        ((10, 11, 12), Retention(keep_days=2), ["s12", "s11"]),  # the newest always stays
        ((), Retention(keep_last=1), []),
    ],
)
def test_retention_keeps_what_any_rule_keeps(
    days_ago: Sequence[float], retention: Retention, expired: list[str]
) -> None:
    assert [s.name for s in expired_snapshots(snaps(*days_ago), NOW, retention)] == expired


def test_cron_slots_follow_the_zone_across_a_dst_change() -> None:
    # 2026-03-29: Paris springs forward at 02:00; "30 2" does not exist that night
    before = 1_774_737_000_000  # 2026-03-28T22:30:00Z = 23:30 in Paris
    first = cron_next_ms("0 3 * * *", "Europe/Paris", before)
    assert first == 1_774_746_000_000  # 2026-03-29T01:00:00Z = 03:00 CEST
    assert cron_next_ms("0 3 * * *", "Europe/Paris", first) == first + DAY_MS
    assert cron_next_ms("0 3 * * *", "UTC", before) == before + 16_200_000  # 4.5 h


def test_cron_slots_are_strictly_after_and_six_fields_start_with_seconds() -> None:
    assert cron_next_ms("0 0 * * *", "UTC", START_MS) == START_MS + DAY_MS
    assert cron_next_ms("*/15 * * * * *", "UTC", START_MS + 1) == START_MS + 15_000


def test_schedule_is_a_cron_or_an_interval_after_the_last_run() -> None:
    assert next_run_ms(BackupSchedule(interval_s=600), START_MS + 5) == START_MS + 600_005
    cron = BackupSchedule(cron="*/5 * * * *", tz="Asia/Kolkata")  # a half-hour offset zone
    assert next_run_ms(cron, START_MS) == START_MS + 300_000


@pytest.mark.parametrize(
    ("pattern", "zone", "key"),
    [
        ("61 * * * *", None, "BACKUP_CRON_PATTERN_SQLITE"),
        ("0 0 31 2 *", None, "BACKUP_CRON_PATTERN_SQLITE"),  # never matches
        ("0 0 * * *", "Mars/Olympus_Mons", "BACKUP_CRON_TZ_SQLITE"),
    ],
)
def test_a_bad_cron_pattern_or_zone_is_refused_by_name(
    settings: Settings, pattern: str, zone: str | None, key: str
) -> None:
    bad = dataclasses.replace(settings, backup_cron=pattern, backup_cron_tz=zone)
    with pytest.raises(ConfigError, match=key):
        schedule_from(bad)


async def test_a_server_with_a_bad_cron_pattern_does_not_start(tmp_path: Path) -> None:
    result = await asyncio.to_thread(
        cli,
        tmp_path,
        "serve",
        BACKUP_PATH_DIR_SQLITE=str(tmp_path),
        BACKUP_CRON_PATTERN_SQLITE="0 25 * * *",
        PORT="0",
    )
    assert result.returncode == 2
    assert "BACKUP_CRON_PATTERN_SQLITE" in result.stderr


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"BACKUP_INTERVAL_S": "60"}, "BACKUP_PATH_DIR_SQLITE"),
        (
            {"BACKUP_INTERVAL_S": "60", "BACKUP_CRON_PATTERN_SQLITE": "0 0 * * *"},
            "BACKUP_INTERVAL_S",
        ),
        ({"BACKUP_OBJECT_STORAGE_MULTIPART_THRESHOLD": "1024"}, "MULTIPART_THRESHOLD"),
    ],
)
def test_backup_settings_are_checked_at_start(
    environ: dict[str, str], key: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=key):
        load(environ, env_file=_empty_env(tmp_path))


def _empty_env(tmp_path: Path) -> Path:
    path = tmp_path / "empty.env"
    path.write_text("")
    return path


def test_checksum_files_use_the_sha256sum_format() -> None:
    line = checksum_line("ab" * 32, "tasks-x.db")
    assert line == f"{'ab' * 32}  tasks-x.db\n"
    assert parse_checksum(line) == "ab" * 32
    assert parse_checksum("not a checksum") is None


# -- both targets, one contract -------------------------------------------------------------------


async def test_a_published_snapshot_comes_back_with_its_checksum(
    target: Target, tmp_path: Path
) -> None:
    source = make_database(tmp_path / "tasks.db")
    name = snapshot_name("tasks", START_MS)
    published = await asyncio.to_thread(back_up, source, target, name, START_MS)
    assert sorted(target.names()) == [name, f"{name}.sha256"]
    fetched_dir = tmp_path / "fetched"
    fetched_dir.mkdir()
    path, recorded = await asyncio.to_thread(target.fetch, name, fetched_dir)
    assert recorded == published.checksum == sha256_file(path)
    assert published.size_bytes == path.stat().st_size
    check_database(path)
    assert not list(target.staging.glob(".*.partial")), "no partial file is left behind"


async def test_retention_prunes_snapshots_with_their_checksums(
    target: Target, tmp_path: Path
) -> None:
    source = make_database(tmp_path / "tasks.db")
    names = []
    for day in range(4):
        now = START_MS + day * DAY_MS
        name = snapshot_name("tasks", now)
        names.append(name)
        published = await asyncio.to_thread(
            back_up, source, target, name, now, Retention(keep_last=2)
        )
    assert published.removed == (names[1],)  # the oldest went on the previous run
    assert sorted(target.names()) == sorted(
        [names[2], f"{names[2]}.sha256", names[3], f"{names[3]}.sha256"]
    )


# -- consistency while the server writes ----------------------------------------------------------


async def test_snapshots_taken_during_registrations_hold_every_returned_task(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, tmp_path: Path
) -> None:
    bulky = {"url": "http://127.0.0.1:9/hook", "method": "POST", "data": "x" * 30_000}
    await asyncio.gather(*(register_task(client, owner, bulky, FAR) for _ in range(300)))
    returned: list[str] = []
    stop = asyncio.Event()

    async def keep_registering() -> None:
        while not stop.is_set():
            response = await register_task(client, owner, config=FAR)
            assert response.status_code == 201, response.text
            returned.append(response.json()["id"])

    writers = [asyncio.create_task(keep_registering()) for _ in range(4)]
    await wait_until(lambda: len(returned) >= 20, message="registrations under way")
    checks: list[tuple[set[str], Path]] = []
    overlapped = 0
    for round_ in range(3):
        before = set(returned)  # every one of these returned before the snapshot began
        to = tmp_path / f"snap-{round_}.db"
        await asyncio.to_thread(back_up_now, server.settings, START_MS, to)
        overlapped += len(returned) - len(before)
        checks.append((before, to))
    stop.set()
    await asyncio.gather(*writers)
    everything = set(returned) | task_ids(server.settings.database_path)
    for before, snapshot in checks:
        held = task_ids(snapshot)  # opens and passes integrity_check
        assert before <= held <= everything
    assert overlapped > 0, "registrations went on while the snapshots were taken"


class GatedTarget(LocalTarget):
    """A local target whose publish waits for the test: a backup that is 'in progress' for as
    long as the test needs."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def publish(self, snapshot: Path, name: str, checksum: str) -> str:
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        return super().publish(snapshot, name, checksum)


async def test_the_api_answers_while_a_backup_is_in_progress(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock, tmp_path: Path
) -> None:
    gated = GatedTarget(tmp_path / "backups")
    job = BackupJob(server.settings, clock, gated)
    running_backup = asyncio.create_task(job.run_once())
    try:
        await wait_until(gated.entered.is_set, message="the backup to reach its upload")
        assert (await client.get("/status")).status_code == 200
        assert (await register_task(client, owner, config=FAR)).status_code == 201
    finally:
        gated.gate.set()
    published = await running_backup
    assert snapshot_files(tmp_path / "backups") == [Path(published.location).name]


async def test_stopping_the_job_lets_a_snapshot_in_progress_finish(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    make_database(settings.database_path)
    gated = GatedTarget(tmp_path / "backups")
    job = BackupJob(dataclasses.replace(settings, backup_interval_s=60), clock, gated)
    loop = asyncio.create_task(job.run())
    await settle(job)
    clock.advance(60)
    await wait_until(gated.entered.is_set, message="the backup to reach its upload")
    loop.cancel()
    gated.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert job.completed == 0  # cancelled: it does not count, but it is whole on disk
    assert len(snapshot_files(gated.directory)) == 1
    assert not list(gated.directory.glob(".*"))


# -- the scheduled job ----------------------------------------------------------------------------


async def settle(job: BackupJob) -> None:
    for _ in range(5):  # let a loop woken by clock.advance() look at the time
        await asyncio.sleep(0)
    await wait_until(job.idle.is_set, message="the backup job to wait for its next slot")


async def completed(job: BackupJob, runs: int) -> None:
    await wait_until(lambda: job.completed == runs, message=f"backup {runs} to complete")


def snapshot_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("tasks-*.db"))


async def test_interval_backups_run_on_the_clock_and_keep_the_last_n(
    make_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    directory = tmp_path / "backups"
    server = await make_server(
        backup_dir=str(directory), backup_interval_s=3600, backup_keep_last=2
    )
    job = server.backup
    assert job is not None
    await settle(job)
    clock.advance(3599)
    await settle(job)
    assert snapshot_files(directory) == []
    for hour in (1, 2, 3):
        clock.advance(1 if hour == 1 else 3600)
        await completed(job, hour)
        await settle(job)  # asleep until the next slot before the clock moves again
    assert snapshot_files(directory) == [
        snapshot_name("tasks", START_MS + 2 * 3_600_000),
        snapshot_name("tasks", START_MS + 3 * 3_600_000),
    ]
    assert job.next_run_ms == START_MS + 4 * 3_600_000


async def test_cron_backups_run_at_their_slot(
    make_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    directory = tmp_path / "backups"
    server = await make_server(backup_dir=str(directory), backup_cron="*/15 * * * *")
    job = server.backup
    assert job is not None
    await settle(job)
    assert job.next_run_ms == START_MS + 15 * 60_000
    clock.advance(15 * 60)
    await wait_until(lambda: job.completed == 1, message="the 00:15 backup")
    assert snapshot_files(directory) == ["tasks-20260101T001500.000Z.db"]


async def test_a_failed_backup_is_logged_and_the_next_slot_still_runs(
    make_server: ServerFactory, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "backups"
    directory.write_text("a file where the directory should be")
    server = await make_server(backup_dir=str(directory), backup_interval_s=60)
    job = server.backup
    assert job is not None
    await settle(job)
    clock.advance(60)
    await wait_until(lambda: job.failures == 1, message="the first backup to fail")
    await settle(job)
    assert "backup failed" in caplog.text
    directory.unlink()
    clock.advance(60)
    await wait_until(lambda: job.completed == 1, message="the next backup to succeed")
    assert len(snapshot_files(directory)) == 1
    assert server.scheduler.alive


# -- object storage -------------------------------------------------------------------------------


async def test_object_storage_backups_upload_beside_a_checksum_and_never_log_secrets(
    s3_settings: Settings,
    s3_server: S3Server,
    bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    make_database(s3_settings.database_path)
    clock = FakeClock()
    job = BackupJob(s3_settings, clock)
    published = await job.run_once()
    key = f"nightly/tasks/{snapshot_name('tasks', START_MS)}"
    assert published.location == f"s3://{bucket}/{key}"
    s3 = s3_server.client()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    sums = s3.get_object(Bucket=bucket, Key=f"{key}.sha256")["Body"].read().decode()
    assert parse_checksum(sums) == published.checksum
    assert (tmp_path / "downloaded.db").write_bytes(body) == published.size_bytes
    assert sha256_file(tmp_path / "downloaded.db") == published.checksum
    assert "written to s3://" in caplog.text
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in (ACCESS_KEY, SECRET_KEY, SESSION_TOKEN):
        assert secret not in logged
        assert secret not in repr(s3_settings)


async def test_a_large_snapshot_goes_up_in_parts_and_restores(
    s3_settings: Settings, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    part = 5 * 1024 * 1024
    settings = dataclasses.replace(s3_settings, s3_multipart_threshold_bytes=part)
    make_database(settings.database_path, filler_bytes=12_000_000)
    published = await asyncio.to_thread(back_up_now, settings, START_MS)
    key = published.location.removeprefix(f"s3://{bucket}/")
    head = s3_server.client().head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3"), "a multipart upload of three parts"
    assert head["ContentLength"] == published.size_bytes > 2 * part

    target = dataclasses.replace(settings, path_sqlite=str(tmp_path / "restored" / "tasks.db"))
    restored = await asyncio.to_thread(restore_now, target, "latest", START_MS + 1)
    assert restored.checksum == published.checksum
    assert sha256_file(target.database_path) == published.checksum


# -- restore --------------------------------------------------------------------------------------


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    """A good snapshot with its checksum in ``tmp_path/snaps``."""
    (tmp_path / "source").mkdir()
    source = make_database(tmp_path / "source" / "tasks.db", 3_000_000)
    to = tmp_path / "snaps" / "good.db"
    to.parent.mkdir()
    settings = Settings(path_sqlite=str(source))
    back_up_now(settings, START_MS, to)
    return to


def corrupt_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 4096):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def rewrite_checksum(path: Path) -> None:
    path.with_name(f"{path.name}.sha256").write_text(checksum_line(sha256_file(path), path.name))


def corrupt_pages_keeping_a_valid_checksum(path: Path) -> None:
    corrupt_middle(path)
    rewrite_checksum(path)


def replace_with_noise(path: Path) -> None:
    path.write_bytes(os.urandom(8192))
    rewrite_checksum(path)


def drop_checksum(path: Path) -> None:
    path.with_name(f"{path.name}.sha256").unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (corrupt_middle, "does not match its checksum"),
        (corrupt_pages_keeping_a_valid_checksum, "integrity check"),
        (replace_with_noise, "not a readable"),
        (drop_checksum, "no checksum"),
    ],
    ids=["bytes-flipped", "pages-broken-checksum-redone", "not-sqlite", "checksum-missing"],
)
def test_restore_refuses_a_damaged_snapshot_and_changes_nothing(
    snapshot: Path, tmp_path: Path, damage: Callable[[Path], None], reason: str
) -> None:
    damage(snapshot)
    database = tmp_path / "live" / "tasks.db"
    with pytest.raises(BackupError, match=reason):
        restore(str(snapshot), database, None, START_MS)
    assert sorted(p.name for p in database.parent.iterdir()) == ["tasks.db.lock"]


async def test_restore_refuses_a_database_a_server_is_using_even_with_force(
    server: Server, snapshot: Path
) -> None:
    with pytest.raises(BackupError, match="in use by a running tasks-server"):
        await asyncio.to_thread(
            restore, str(snapshot), server.settings.database_path, None, START_MS, True
        )
    assert (await server.store.list_owners()) == []  # the server's database is untouched


def test_restore_replaces_an_existing_database_only_with_force(
    snapshot: Path, tmp_path: Path
) -> None:
    database = make_database(tmp_path / "tasks.db")
    Path(f"{database}-wal").write_bytes(b"old wal")
    before = database.read_bytes()
    with pytest.raises(BackupError, match="pass --force"):
        restore(str(snapshot), database, None, START_MS)
    assert database.read_bytes() == before
    restored = restore(str(snapshot), database, None, START_MS, force=True)
    assert restored.replaced == tmp_path / "tasks.db.replaced-20260101T000000.000Z"
    assert restored.replaced.read_bytes() == before
    assert Path(f"{restored.replaced}-wal").read_bytes() == b"old wal"  # kept as a pair
    assert not Path(f"{database}-wal").exists()
    assert sha256_file(database) == sha256_file(snapshot)


async def test_a_restored_database_runs_its_pending_tasks(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    async with TargetServer() as target:
        target.route("/hook", Reply(200, b"ok"))
        hook = {"url": target.url("/hook"), "method": "POST"}
        async with running(settings, clock) as first, client_for(first) as client:
            owner = await register_owner(client, "restorer")

            async def add(delay_ms: int) -> str:
                response = await register_task(client, owner, hook, {"executionDelay": delay_ms})
                assert response.status_code == 201, response.text
                return str(response.json()["id"])

            done = await add(0)

            async def succeeded() -> bool:
                response = await client.get(f"/v1/queues/{done}", headers=owner.headers)
                return bool(response.json()["state"] == "SUCCESS")

            await wait_until(succeeded, message="the first task to succeed")
            soon, later, tomorrow = await add(10_000), await add(20_000), await add(DAY_MS)
            to = tmp_path / "snaps"
            to.mkdir()
            published = await asyncio.to_thread(back_up_now, settings, clock.now_ms(), to)
            lost = await add(5_000)  # after the snapshot: the restore rolls it back
        assert target.arrivals[0].header("X-Tasks-Queue-Id") == done

        restored = await asyncio.to_thread(
            restore, published.location, settings.database_path, None, 0, True
        )
        assert restored.replaced is not None
        async with running(settings, clock) as second:
            clock.advance(10)
            await wait_until(lambda: len(target.arrivals) == 2, message="the 10 s task")
            clock.advance(10)
            await wait_until(lambda: len(target.arrivals) == 3, message="the 20 s task")
            await wait_until(lambda: second.scheduler.in_flight == 0, message="calls to finish")
            ran = [a.header("X-Tasks-Queue-Id") for a in target.arrivals]
            assert ran == [done, soon, later]
            assert lost not in ran
            assert tomorrow in task_ids(settings.database_path)


# -- the command line -----------------------------------------------------------------------------


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "S3_", "AWS_"))}
    environ |= {"PATH_SQLITE": str(tmp_path / "tasks.db"), "LOG_LEVEL": "WARNING", **env}
    return subprocess.run(
        [sys.executable, "-m", "tasks_server", *args],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cli_backs_up_a_live_server_and_restores_when_it_has_stopped(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    directory = tmp_path / "backups"
    env = {"BACKUP_PATH_DIR_SQLITE": str(directory), "BACKUP_KEEP_LAST": "1"}
    async with running(settings, clock) as server, client_for(server) as client:
        owner = await register_owner(client, "cli-owner")
        task = (await register_task(client, owner, config=FAR)).json()["id"]
        first = await asyncio.to_thread(cli, tmp_path, "backup", **env)
        assert first.returncode == 0, first.stderr
        second = await asyncio.to_thread(cli, tmp_path, "backup", **env)
        assert second.returncode == 0, second.stderr
        report = json.loads(second.stdout)
        assert report["expired"] == [Path(json.loads(first.stdout)["location"]).name]
        refused = await asyncio.to_thread(cli, tmp_path, "restore", "latest", "--force", **env)
        assert refused.returncode == 1
        assert "in use by a running tasks-server" in refused.stderr
    assert snapshot_files(directory) == [Path(report["location"]).name]

    kept = cli(tmp_path, "restore", "latest", **env)
    assert kept.returncode == 1 and "pass --force" in kept.stderr
    done = cli(tmp_path, "restore", "latest", "--force", **env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sha256"] == report["sha256"]
    assert task in task_ids(tmp_path / "tasks.db")


def test_cli_backup_without_a_target_is_a_configuration_error(tmp_path: Path) -> None:
    make_database(tmp_path / "tasks.db")
    result = cli(tmp_path, "backup")
    assert result.returncode == 2
    assert "BACKUP_PATH_DIR_SQLITE" in result.stderr
    to_file = cli(tmp_path, "backup", "--to", "copy.db")
    assert to_file.returncode == 0, to_file.stderr
    assert (tmp_path / "copy.db.sha256").is_file()
    assert task_ids(tmp_path / "copy.db") == set()
