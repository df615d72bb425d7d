"""What every group of PostgreSQL store operations shares: the connection pool, the
transaction runner, this node's identity and lease time, and the codecs that seal and open
stored values."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import AsyncConnection, AsyncCursor, errors
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool
from pydantic import TypeAdapter

from ...errors import StorageUnavailable
from ...models import Task, TaskSpec, TaskState
from ...sealing import Sealer
from .migrate import migrate

logger = logging.getLogger(__name__)
T = TypeVar("T")

SPEC = TypeAdapter(TaskSpec)
METADATA = TypeAdapter(tuple[tuple[str, str], ...])

# every connection says who it is: `migrate-data` refuses a database a server is using
APPLICATION_NAME = "tasks-server"
# the connections of running servers (tools name theirs "tasks-server-<tool>")
SERVERS_ON_IT: LiteralString = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name LIKE %s AND pid <> pg_backend_pid()"
)
# the channel on which a node tells the others that tasks became due (see listen)
DUE_CHANNEL: LiteralString = "tasks_due"
SCHEDULE_CHANNEL: LiteralString = "tasks_schedules"
NOTIFY: LiteralString = "SELECT pg_notify(%s, %s)"
_NOTIFY_BYTES = 7000  # PostgreSQL refuses payloads of 8000 bytes or more
# A task is claimed first by the node that made it claimable (registered it, scheduled its
# retry, reclaimed it, ...): that node armed it itself at its due time. The other nodes,
# woken through NOTIFY, arm it for a backup claim a little after its due time instead, so
# that while that node is alive its claim comes first and theirs finds nothing to take, and
# when it died they take the task late by at most the backup delay. Backup times are
# rounded up to a grid: one claim statement covers the tasks of a grid step. (Every node
# claiming every task at its due time made N claim statements per task on N nodes, all
# but one finding the rows locked or taken.)
BACKUP_MARGIN_MS = 250  # after the claim lookahead: the first node's claim is late by this
BACKUP_GRID_MS = 250
_RETRIES = 5
# The lease renewal's connection: its commits do not wait for the disk (a renewal lost to
# a database crash only ends a lease early: the task is sent again, at least once, and a
# late outcome is fenced), a renewal stuck behind a lock gives up within the lease, and a
# cut connection is noticed by keepalive probes within about 5 s.
_RENEWAL_SESSION = "-c synchronous_commit=off -c statement_timeout={lease_ms}"
_RENEWAL_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 3,
}


# the nodes serving now: every pooled connection names its node (connection_options)
LIVE_NODES: LiteralString = (
    "SELECT DISTINCT substr(application_name, %s) FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name LIKE %s"
)


def backup_at(due_ms: int, after_ms: int) -> int:
    """When a node that did not make a task claimable first tries to claim it."""
    at = due_ms + after_ms
    return -(-at // BACKUP_GRID_MS) * BACKUP_GRID_MS


def first_node(task_id: str, nodes: Sequence[str]) -> str:
    """The node that claims a task first when none made it claimable lately (a task a
    refill loads): the highest hash of node and task (rendezvous hashing), so every node
    that sees the same live nodes picks the same one, and a node's death or arrival moves
    only the tasks it had or gets."""
    return max(nodes, key=lambda node: zlib.crc32(f"{node}|{task_id}".encode()))


def new_node_id() -> str:
    """This process's name in lease columns: host, pid and a random part (a restarted
    process never mistakes its predecessor's leases for its own)."""
    return f"{socket.gethostname()[:24]}-{os.getpid()}-{secrets.token_hex(4)}"


def connection_options(node_id: str, lease_ms: int) -> dict[str, Any]:
    """Every connection names its node (pg_stat_activity shows which node holds what).

    A node cut off from the database in the middle of a transaction would leave it open,
    its row locks held, and the claims it locks out of reach of the other nodes: the
    server ends such a session once it has been idle in a transaction for half a lease (at
    least a second; the node's own transactions never pause that long between statements).
    """
    idle_ms = max(lease_ms // 2, 1000)
    return {
        "application_name": f"{APPLICATION_NAME} {node_id}"[:63],
        "autocommit": True,
        "options": f"-c idle_in_transaction_session_timeout={idle_ms}",
    }


class PgBase:
    """Lifecycle, the pool and the codecs; the operation groups subclass it."""

    def __init__(
        self,
        url: str,
        sealer: Sealer,
        lease_ms: int = 10_000,
        pool_size: int = 10,
        wake_horizon_ms: int = 60_000,
        node_id: str | None = None,
        keep_attempts: int = 0,
        claim_lookahead_ms: int = 250,
    ) -> None:
        self.url = url
        self.node_id = node_id or new_node_id()
        self._lease_ms = lease_ms
        self._sealer = sealer
        self._pool_size = pool_size
        self._wake_horizon_ms = wake_horizon_ms
        self._keep_attempts = keep_attempts  # the first and the last N per task (0: all)
        # tasks other nodes made claimable, and when this node backs their claim up (see
        # BACKUP_MARGIN_MS): the refill arms them at that time too
        self._backup_after_ms = claim_lookahead_ms + BACKUP_MARGIN_MS
        self._backups: dict[str, int] = {}
        # tasks this node made claimable (and told the others of), by due time: it claims
        # them first, whatever the hash of a refill says
        self._firsts: dict[str, int] = {}
        self._pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] | None = None
        # lease renewals never wait for a pooled connection that claims, outcomes and the
        # API compete for: a busy node must not lose its leases (see renew_leases)
        self._renewal: AsyncConnection[tuple[Any, ...]] | None = None
        self._write_problem: str | None = None

    @property
    def lease_ms(self) -> int | None:
        return self._lease_ms

    def write_problem(self) -> str | None:
        return self._write_problem

    # -- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        conn = await AsyncConnection.connect(
            self.url, **connection_options(self.node_id, self._lease_ms)
        )
        try:
            await migrate(conn)
        finally:
            await conn.close()
        self._pool = AsyncConnectionPool(
            self.url,
            min_size=min(2, self._pool_size),
            max_size=self._pool_size,
            kwargs=connection_options(self.node_id, self._lease_ms),
            open=False,
            name="tasks-store",
        )
        await self._pool.open(wait=True, timeout=30)
        try:
            await self._verify_key()
        except BaseException:
            await self.close()
            raise

    async def _verify_key(self) -> None:
        """Raise ConfigError naming CIPHER_KEY unless the sealer opens the key check value
        (see sealed.py)."""

    async def close(self) -> None:
        await self._close_extra()
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            await renewal.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _close_extra(self) -> None:
        """Connections of their own (listener, leadership) close here."""

    # -- running statements -------------------------------------------------------------

    async def _tx(self, op: Callable[[AsyncCursor[tuple[Any, ...]]], Awaitable[T]]) -> T:
        """Run ``op`` in one transaction; retried from the start when PostgreSQL aborts
        it for a deadlock or a serialization failure, or once when the session is lost
        before COMMIT was sent (nothing was committed then: the server ends a session
        left idle in a transaction, see connection_options, and a node whose event loop
        stalled on a loaded machine can leave one so). The op must be safe to repeat."""
        assert self._pool is not None, "store is not open"
        lost_before_commit = 0
        for attempt in range(_RETRIES):
            stage = "connecting"
            try:
                async with self._pool.connection() as conn:
                    stage = "running"
                    async with conn.transaction(), conn.cursor() as cur:
                        result = await op(cur)
                        stage = "committing"  # whether COMMIT arrived cannot be known
            except (errors.DeadlockDetected, errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise
                logger.info("transaction aborted by a concurrent one; running it again")
                continue
            except psycopg.OperationalError as exc:
                if stage == "running" and conn.broken and not lost_before_commit:
                    lost_before_commit += 1
                    logger.info("session lost before its commit (%s); running it again", exc)
                    continue
                self._write_problem = f"the database is out of reach: {exc}"
                raise StorageUnavailable(self._write_problem) from exc
            self._write_problem = None
            return result
        raise AssertionError("unreachable")

    async def _write_one(self, sql: LiteralString, params: Any) -> list[tuple[Any, ...]]:
        """A write of a single statement that returns rows; it is a transaction of its own
        on these autocommit connections: one round trip, no BEGIN and COMMIT."""
        return await self._write_one_rows(sql, params, fetch=True)

    async def _write_one_no_rows(self, sql: LiteralString, params: Any) -> None:
        await self._write_one_rows(sql, params, fetch=False)

    async def _write_one_rows(
        self, sql: LiteralString, params: Any, fetch: bool
    ) -> list[tuple[Any, ...]]:
        assert self._pool is not None, "store is not open"
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(sql, params)
                rows = await cur.fetchall() if fetch else []
        except psycopg.OperationalError as exc:
            self._write_problem = f"the database is out of reach: {exc}"
            raise StorageUnavailable(self._write_problem) from exc
        self._write_problem = None
        return rows

    async def _renew_on_own_connection(self, sql: LiteralString, params: Any) -> None:
        """One statement on the renewal connection (opened on first use, opened again
        after an error)."""
        try:
            if self._renewal is None:
                options = connection_options(self.node_id, self._lease_ms)
                options["options"] += " " + _RENEWAL_SESSION.format(lease_ms=self._lease_ms)
                conninfo = make_conninfo(self.url, **_RENEWAL_KEEPALIVES)
                self._renewal = await AsyncConnection.connect(conninfo, **options)
            await self._renewal.execute(sql, params)
        except psycopg.Error as exc:
            renewal, self._renewal = self._renewal, None
            if renewal is not None:
                await renewal.close()
            raise StorageUnavailable(f"the database is out of reach: {exc}") from exc

    async def _read(self, sql: LiteralString, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        assert self._pool is not None, "store is not open"
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(sql, params)
                return await cur.fetchall()
        except psycopg.OperationalError as exc:
            raise StorageUnavailable(f"the database is out of reach: {exc}") from exc

    async def _notify_due(
        self, cur: AsyncCursor[tuple[Any, ...]], due: Sequence[tuple[str, int]], now_ms: int
    ) -> None:
        """Tell the other nodes, at commit, about tasks that became claimable within the
        near future (later ones reach them through their periodic refill)."""
        horizon = now_ms + self._wake_horizon_ms
        near = [f"{task_id}:{due_ms}" for task_id, due_ms in due if due_ms < horizon]
        self._firsts.update((task_id, due_ms) for task_id, due_ms in due if due_ms < horizon)
        # payload: "<sending node>|<id>:<due ms>,<id>:<due ms>,..."
        chunk: list[str] = []
        size = len(self.node_id) + 1
        for item in near:
            if chunk and size + len(item) + 1 > _NOTIFY_BYTES:
                await cur.execute(NOTIFY, (DUE_CHANNEL, f"{self.node_id}|{','.join(chunk)}"))
                chunk, size = [], len(self.node_id) + 1
            chunk.append(item)
            size += len(item) + 1
        if chunk:
            await cur.execute(NOTIFY, (DUE_CHANNEL, f"{self.node_id}|{','.join(chunk)}"))

    async def _notify_schedule(
        self, cur: AsyncCursor[tuple[Any, ...]], next_at_ms: int | None
    ) -> None:
        if next_at_ms is not None:
            await cur.execute(NOTIFY, (SCHEDULE_CHANNEL, str(next_at_ms)))

    # -- codecs -----------------------------------------------------------------------

    def _seal_spec(self, spec: TaskSpec) -> bytes:
        return self._sealer.seal(SPEC.dump_json(spec, exclude_defaults=True))

    def _open_spec(self, blob: bytes) -> TaskSpec:
        return SPEC.validate_json(self._sealer.open(bytes(blob)))

    def _seal(self, value: bytes | None) -> bytes | None:
        return None if value is None else self._sealer.seal(value)

    def _open(self, value: bytes | None) -> bytes | None:
        return None if value is None else self._sealer.open(bytes(value))

    def _seal_metadata(self, metadata: tuple[tuple[str, str], ...] | None) -> bytes | None:
        return self._seal(None if metadata is None else METADATA.dump_json(metadata))

    def _task(self, row: Sequence[Any]) -> Task:
        metadata = self._open(row[8])
        return Task(
            id=row[0],
            owner_id=row[1],
            state=TaskState(row[2]),
            created_at_ms=row[3],
            status_code=row[4],
            estimate_end_at_ms=row[5],
            estimate_execution_at_ms=row[6],
            response=self._open(row[7]),
            metadata=None if metadata is None else METADATA.validate_json(metadata),
            attempts=row[9],
            retry_count=row[10],
            due_at_ms=row[11],
            response_truncated=bool(row[12]),
        )
