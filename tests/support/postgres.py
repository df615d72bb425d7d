"""A throwaway PostgreSQL cluster for the tests: initdb and pg_ctl in a temporary
directory, a free TCP port on 127.0.0.1 and the unix socket in that directory, stopped at
the end of the session. With DATABASE_URL set, that server is used instead.

initdb refuses to run as root, so when the tests run as root the cluster belongs to the
``postgres`` system user (the Debian package creates it) and is started through runuser.
Each test gets a database of its own (CREATE DATABASE is cheap), dropped afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .process import free_port

# a throwaway cluster for tests: durability settings off keep the suite fast; the code
# under test makes no assumption about them (benchmarks keep PostgreSQL's defaults)
_FAST = ("fsync = off", "synchronous_commit = off", "full_page_writes = off")
_SETTINGS = (
    "max_connections = 300",
    "shared_buffers = 64MB",
    "listen_addresses = '127.0.0.1'",
)


@dataclass
class PostgresServer:
    """Where to reach the server as a superuser, and how to make test databases."""

    admin_url: str
    data_dir: Path | None = None  # the throwaway cluster's; None for DATABASE_URL's server

    def postmaster_pid(self) -> int | None:
        if self.data_dir is None:
            return None
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def url_for(self, database: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + f"/{database}"

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return self.url_for(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def find_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_cluster_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextlib.contextmanager
def throwaway_cluster(bin_dir: Path, durable: bool = False) -> Iterator[PostgresServer]:
    """initdb + pg_ctl start in a new temporary directory; stop and remove it at the end.
    ``durable`` keeps fsync and synchronous commits on (for benchmarks)."""
    directory = Path(tempfile.mkdtemp(prefix="tasks-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
    data = directory / "data"
    port = free_port()
    run = _runner(directory)
    try:
        run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "tasks",
                "--auth=trust",
                "-E",
                "UTF8",
                "-N",
            ]
        )
        with (data / "postgresql.conf").open("a") as conf:
            settings = _SETTINGS if durable else (*_FAST, *_SETTINGS)
            conf.write("\n".join((*settings, f"port = {port}")) + "\n")
            conf.write(f"unix_socket_directories = '{directory}'\n")
        log = directory / "server.log"
        run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "start"])
        try:
            yield PostgresServer(f"postgresql://tasks@127.0.0.1:{port}/postgres", data)
        finally:
            run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _runner(directory: Path):  # type: ignore[no-untyped-def]
    def run(command: list[str]) -> None:
        result = subprocess.run(
            _as_cluster_user(command), cwd=directory, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stdout}{result.stderr}")

    return run


async def stored_values(url: str) -> bytes:
    """Every value of every row of the store's tables, as bytes (what a reader of the
    database, or of its files, could see)."""
    raw = b""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for table in ("owner", "task", "attempt", "schedule", "owner_security"):
            cur = await conn.execute(f"SELECT * FROM {table}")  # type: ignore[arg-type]
            for row in await cur.fetchall():
                raw += b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row)
    return raw
