"""API latency while the server backs itself up, against the same server between backups.

    .venv/bin/python -m bench.bench_backup [--tasks 100000] [--seconds 40] [--interval 5] [--s3]

Starts ``tasks-server serve`` in a subprocess (free port, temporary directory), fills its
database with ``--tasks`` pending tasks through the store, and restarts it with scheduled
backups every ``--interval`` seconds (to a local directory, or with ``--s3`` to moto's S3
server in another subprocess). Two closed-loop clients then run side by side for
``--seconds``: one calls ``GET /status``, the other registers tasks. Each request is put
in the "during a backup" or the "between backups" group by the backup start and end times
the server logs. Prints latency percentiles, the backups' figures, the cost of each backup
step on this database, and what gzip would save. Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import RawClient, Server, percentile, register_owner, task_body
from tasks_server.backup.snapshot import sha256_file
from tasks_server.models import HttpRequest, NewTask, TaskConfig, TaskSpec
from tasks_server.sealing import Sealer
from tasks_server.store.sqlite import SqliteStore, check_database, take_snapshot

if TYPE_CHECKING:
    from tests.support.s3 import S3Server

MONTH_MS = 30 * 86_400_000


@dataclass
class Samples:
    """(wall start, wall end, latency ms) of every request of one kind."""

    calls: list[tuple[float, float, float]] = field(default_factory=list)


async def fill(database: Path, owner_id: str, count: int) -> float:
    """Create ``count`` tasks due in a month through the store (group commit); seconds."""
    store = SqliteStore(database, Sealer("bench"), "NORMAL")
    await store.open()
    started = time.perf_counter()
    now = time.time_ns() // 1_000_000
    spec = TaskSpec(
        HttpRequest(url="http://127.0.0.1:9/hook", method="POST", data_json='{"n":1}'),
        TaskConfig(retry=3, retry_interval_ms=1000, retry_exponential=True),
    )
    for first in range(0, count, 2000):
        batch = range(first, min(count, first + 2000))
        await asyncio.gather(
            *(store.create_task(owner_id, NewTask(spec, now + MONTH_MS + i), now) for i in batch)
        )
    await store.close()
    return time.perf_counter() - started


async def hammer(
    port: int, request: tuple[str, str, bytes], headers: dict[str, str], until: float, into: Samples
) -> None:
    """One request after another (a closed loop) until wall time ``until``."""
    client = RawClient(port)
    method, path, body = request
    while time.time() < until:
        start = time.time()
        tick = time.perf_counter()
        status, payload = await client.request(method, path, body, headers)
        into.calls.append((start, time.time(), (time.perf_counter() - tick) * 1000))
        assert status in (200, 201), payload
    client.close()


def backup_windows(log: Path) -> list[tuple[float, float, str]]:
    """(start, end, end message) of every backup in the server's JSON log."""
    starts: dict[str, float] = {}
    windows = []
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry["logger"] != "tasks_server.backup.job":
            continue
        name = entry["message"].split()[1]
        stamp = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
        at = stamp.replace(tzinfo=UTC).timestamp()
        if entry["message"].endswith("started"):
            starts[name] = at
        elif name in starts:
            windows.append((starts.pop(name), at, entry["message"]))
    return windows


AFTER_S = 1.0  # the WAL that grew during a backup is checkpointed by the next commits


def split(samples: Samples, windows: list[tuple[float, float, str]]) -> dict[str, list[float]]:
    """Latencies by when the request ran: during a backup, within AFTER_S after one, or
    otherwise between backups."""
    groups: dict[str, list[float]] = {"between backups": [], "during a backup": []}
    groups[f"<{AFTER_S:.0f} s after one"] = []
    for start, end, latency in samples.calls:
        if any(start <= w_end and end >= w_start for w_start, w_end, _ in windows):
            group = "during a backup"
        elif any(w_end < start <= w_end + AFTER_S for _, w_end, _ in windows):
            group = f"<{AFTER_S:.0f} s after one"
        else:
            group = "between backups"
        groups[group].append(latency)
    return groups


def describe(label: str, values: list[float]) -> str:
    if not values:
        return f"  {label:<17} no requests"
    return (
        f"  {label:<17} n={len(values):>6}  p50 {percentile(values, 50):6.2f} ms  "
        f"p99 {percentile(values, 99):7.2f} ms  max {max(values):7.2f} ms"
    )


def step_costs(database: Path, scratch: Path) -> None:
    """Time each step of one backup of ``database`` here, outside the server."""
    copy = scratch / "steps.db"
    started = time.perf_counter()
    take_snapshot(database, copy)
    snapshot_s = time.perf_counter() - started
    started = time.perf_counter()
    check_database(copy)
    check_s = time.perf_counter() - started
    started = time.perf_counter()
    conn = sqlite3.connect(copy)
    conn.execute("PRAGMA quick_check").fetchall()
    conn.close()
    quick_s = time.perf_counter() - started
    started = time.perf_counter()
    sha256_file(copy)
    hash_s = time.perf_counter() - started
    started = time.perf_counter()
    packed = gzip.compress(copy.read_bytes(), compresslevel=6)
    gzip_s = time.perf_counter() - started
    size = copy.stat().st_size
    print(
        f"steps on a {size / 2**20:.1f} MB snapshot: online copy {snapshot_s:.2f} s, "
        f"integrity_check {check_s:.2f} s (quick_check would be {quick_s:.2f} s), "
        f"sha256 {hash_s:.2f} s; gzip -6 would take {gzip_s:.2f} s for "
        f"{len(packed) / 2**20:.1f} MB ({len(packed) / size:.0%} of the size)"
    )


def backup_env(
    directory: Path, interval: int, use_s3: bool
) -> tuple[dict[str, str], S3Server | None]:
    env = {
        "BACKUP_INTERVAL_S": str(interval),
        "BACKUP_KEEP_LAST": "3",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
    }
    if not use_s3:
        return env | {"BACKUP_PATH_DIR_SQLITE": str(directory / "backups")}, None
    from tests.support.s3 import ACCESS_KEY, SECRET_KEY, S3Server

    moto = S3Server(directory).start()
    moto.client().create_bucket(Bucket="bench")
    return env | {
        "BACKUP_METHOD_SQLITE": "OBJECT_STORAGE",
        "BACKUP_OBJECT_STORAGE_ENDPOINT": moto.endpoint,
        "BACKUP_OBJECT_STORAGE_ACCESS_KEY": ACCESS_KEY,
        "BACKUP_OBJECT_STORAGE_SECRET_KEY": SECRET_KEY,
        "BACKUP_OBJECT_STORAGE_BUCKET_NAME": "bench",
        "BACKUP_OBJECT_STORAGE_PATH": "bench",
    }, moto


async def main(count: int, seconds: float, interval: int, use_s3: bool) -> None:
    directory = Path(tempfile.mkdtemp(prefix="tasks-backup-bench-"))
    server = Server(directory).start()
    headers = await register_owner(server.port, "backup-bench")
    assert server.proc is not None
    server.proc.terminate()
    fill_s = await fill(directory / "tasks.db", headers["X-Tasks-Owner-Id"], count)
    print(f"filled {count:,} tasks through the store in {fill_s:.1f} s")
    step_costs(directory / "tasks.db", directory)

    env, moto = backup_env(directory, interval, use_s3)
    server.env.update(env)
    server.start()
    until = time.time() + seconds
    status, register = Samples(), Samples()
    body = task_body("http://127.0.0.1:9/hook", executionDelay=MONTH_MS)
    await asyncio.gather(
        hammer(server.port, ("GET", "/status", b""), headers, until, status),
        hammer(server.port, ("POST", "/v1/queues/register", body), headers, until, register),
    )
    server.proc.terminate()
    if moto is not None:
        moto.stop()
    windows = backup_windows(directory / "server.log")
    target = "moto S3 (another local process)" if use_s3 else "a local directory"
    durations = [end - start for start, end, _ in windows]
    print(
        f"{len(windows)} backups to {target} in {seconds:.0f} s, each "
        f"{min(durations, default=0):.2f}-{max(durations, default=0):.2f} s; "
        f"last: {windows[-1][2] if windows else '-'}"
    )
    for label, samples in (("GET /status", status), ("POST register", register)):
        print(label)
        for group, latencies in split(samples, windows).items():
            print(describe(group, latencies))
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--interval", type=int, default=5, help="BACKUP_INTERVAL_S")
    parser.add_argument("--s3", action="store_true", help="back up to moto's S3 server")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.tasks, arguments.seconds, arguments.interval, arguments.s3))
