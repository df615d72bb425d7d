"""Memory with many pending tasks: RSS of an idle server, then with N pending tasks.

    .venv/bin/python -m bench.bench_pending [--tasks 1000000] [--days 30]

The tasks are written straight into the database in the store's own format (sealed
specs) to save time, spread over the next ``--days`` days, with the first minute's share
inside the scheduler's in-memory horizon. Prints RSS and start-up figures.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path

from bench.common import Server, register_owner
from tasks_server.models import HttpRequest, TaskConfig, TaskSpec
from tasks_server.sealing import Sealer
from tasks_server.store.ids import new_task_id
from tasks_server.store.migrate import migrate
from tasks_server.store.sqlite import connect
from tasks_server.store.sqlite.base import SPEC

CIPHER_KEY = secrets.token_urlsafe(32)  # the filler and the server seal with the same key


def fill(path: Path, owner_id: str, count: int, days: int) -> float:
    """Insert ``count`` RUNNING tasks due over ``days`` days; returns seconds taken."""
    started = time.perf_counter()
    sealer = Sealer(CIPHER_KEY)
    spec = TaskSpec(
        HttpRequest(url="http://127.0.0.1:9/hook", method="POST", data_json='{"n":1}'),
        TaskConfig(retry=3, retry_interval_ms=1000, retry_exponential=True),
    )
    plain = SPEC.dump_json(spec, exclude_defaults=True)
    now = time.time_ns() // 1_000_000
    span = days * 86_400_000
    conn = connect(path, "NORMAL")
    migrate(conn)
    batch = []
    conn.execute("BEGIN")
    for index in range(count):
        due = now + 120_000 + index * span // count
        batch.append((new_task_id(now), owner_id, now, due, due, due, sealer.seal(plain)))
        if len(batch) == 50_000:
            _insert(conn, batch)
            batch = []
    _insert(conn, batch)
    conn.execute(
        "UPDATE owner SET tasks_in_queue = tasks_in_queue + ? WHERE id = ?", (count, owner_id)
    )
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - started


def _insert(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    conn.executemany(
        "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
        "next_at, spec) VALUES (?, ?, 'RUNNING', ?, ?, ?, ?, ?)",
        rows,
    )


async def main(count: int, days: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="tasks-pending-"))
    server = Server(directory, CIPHER_KEY=CIPHER_KEY).start()
    await register_owner(server.port, "pending")
    time.sleep(1)
    idle_mb = server.rss_mb()
    owner_id = sqlite3.connect(directory / "tasks.db").execute("SELECT id FROM owner").fetchone()[0]
    assert server.proc is not None
    server.proc.terminate()
    fill_s = fill(directory / "tasks.db", owner_id, count, days)
    size_mb = (directory / "tasks.db").stat().st_size / 2**20
    started = time.perf_counter()
    server.start()
    ready_s = time.perf_counter() - started
    await register_owner(server.port, "after")
    time.sleep(2)
    loaded_mb = server.rss_mb()
    print(
        f"pending: idle server RSS {idle_mb:.0f} MB; with {count:,} pending tasks over "
        f"{days} days RSS {loaded_mb:.0f} MB ({(loaded_mb - idle_mb) * 2**20 / count:.1f} "
        f"bytes per pending task); start-up {ready_s:.2f} s; database {size_mb:.0f} MB "
        f"(filled in {fill_s:.1f} s)"
    )
    server.proc.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.tasks, arguments.days))
