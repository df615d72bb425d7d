"""Command line: ``tasks-server serve|migrate|check-config``, plus the ``owner`` and
``task`` client commands (cli/tasks.py) that talk to a running server over HTTP.

Reads Settings once (environment, ``.env``, flags), configures logging once, runs the
command, and returns a process exit code: 0 success, 1 failure, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from .. import log as log_setup
from ..config import Settings, describe, load
from ..errors import ConfigError
from . import cron as cron_commands
from . import dlq as dlq_commands
from . import tasks as task_commands
from . import workflows as workflow_commands

if TYPE_CHECKING:
    from ..processes import Channels

logger = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace, Settings], int]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="tasks-server",
        description="Self-hosted HTTP task server. Settings come from the environment and "
        "a .env file (see README); flags override them.",
    )
    top.add_argument("--version", action="version", version=f"tasks-server {__version__}")
    top.add_argument("--env-file", type=Path, help="read settings from this file instead of .env")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP server and the scheduler")
    serve.add_argument("--host", help="address to listen on (HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (PORT, default 9420)")
    serve.add_argument("--db", dest="path_sqlite", help="SQLite file (PATH_SQLITE)")
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    migrate.add_argument("--db", dest="path_sqlite", help="SQLite file (PATH_SQLITE)")
    migrate.set_defaults(run=_migrate)

    check = commands.add_parser("check-config", help="validate settings and print them")
    check.set_defaults(run=_check_config)

    backup = commands.add_parser("backup", help="take one consistent snapshot of the database")
    backup.add_argument("--db", dest="path_sqlite", help="SQLite file (PATH_SQLITE)")
    backup.add_argument(
        "--to",
        type=Path,
        metavar="PATH",
        help="write into this directory, or to this file, instead of the configured target "
        "(BACKUP_METHOD_SQLITE); no retention is applied there",
    )
    backup.set_defaults(run=_backup)

    restore = commands.add_parser("restore", help="install a snapshot as the database")
    restore.add_argument(
        "source",
        metavar="SOURCE",
        help="a snapshot file; else a snapshot name or object key in the configured target, "
        "or 'latest'",
    )
    restore.add_argument("--db", dest="path_sqlite", help="SQLite file (PATH_SQLITE)")
    restore.add_argument(
        "--force", action="store_true", help="replace an existing database (it is kept aside)"
    )
    restore.set_defaults(run=_restore)

    move = commands.add_parser(
        "migrate-data",
        help="copy a stopped server's SQLite database into an empty PostgreSQL database",
    )
    move.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="sqlite:PATH",
        help="the SQLite database of a stopped server",
    )
    move.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="postgresql://…",
        help="an empty PostgreSQL database that no server uses (migrated first)",
    )
    move.set_defaults(run=_migrate_data)

    rotate = commands.add_parser(
        "rotate-key",
        help="re-seal every stored secret with a new cipher key (stop the server first)",
        description="Open every sealed value with the current key (CIPHER_KEY, else the "
        "key file beside the database) and seal it with a new one, in one transaction. "
        "Without --new-key-file a random key is generated into the key file; then unset "
        "CIPHER_KEY. With it, set CIPHER_KEY to the new key before starting the server. "
        "With DATABASE_URL (PostgreSQL), stop every node first and give --new-key-file; "
        "then set CIPHER_KEY to the new key on every node.",
    )
    rotate.add_argument("--db", dest="path_sqlite", help="SQLite file (PATH_SQLITE)")
    rotate.add_argument(
        "--new-key-file",
        type=Path,
        metavar="FILE",
        help="a file holding the new key (at least 16 characters); default: generate one "
        "into the key file (SQLite only)",
    )
    rotate.set_defaults(run=_rotate_key)

    task_commands.add_commands(commands)  # owner …, task …: HTTP calls to a running server
    cron_commands.add_commands(commands)  # cron …: recurring schedules, the same way
    workflow_commands.add_commands(commands)  # workflow …: multi-step runs, the same way
    dlq_commands.add_commands(commands)  # dlq …: the dead-letter queue
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if task_commands.is_client_command(args):
        return task_commands.run(args)  # a client: no server settings, no logging set-up
    overrides = {key: getattr(args, key, None) for key in ("host", "port", "path_sqlite")}
    try:
        settings = load(env_file=args.env_file, **overrides)
    except ConfigError as exc:
        print(f"tasks-server: configuration error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    log_setup.configure(settings.log_level, settings.log_format)
    run: Command = args.run
    try:
        return run(args, settings)
    except ConfigError as exc:  # a setting only a command can check, e.g. a cron pattern
        print(f"tasks-server: configuration error: {exc}", file=sys.stderr)  # noqa: T201
        return 2


SWITCH_INTERVAL_S = 0.0005  # see _run_server


def tune_collector() -> None:
    """The cycle collector as the server runs it. Objects made at start-up live as long
    as the process: keep them out of the collector's scans, and collect the young
    generation less often (every request allocates many short-lived objects; the default
    threshold of 700 runs it constantly)."""
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    _check_files(settings)
    if settings.uses_postgres:
        return _run_server(settings)
    from ..store.sqlite.lock import ServeLock

    with ServeLock(settings.database_path):  # ConfigError when another server holds it
        if settings.api_processes > 1:
            from .processes import serve_processes

            return serve_processes(settings, _run_server)
        return _run_server(settings)


_SQLITE_HEADER = b"SQLite format 3\x00"


def _check_files(settings: Settings) -> None:
    """Refuse, with the setting's name, files serve would only fail on later with a
    traceback: missing TLS files, a database path that is not an SQLite file."""
    for key, value in (
        ("PATH_TLS_CERT", settings.path_tls_cert),
        ("PATH_TLS_KEY", settings.path_tls_key),
        ("PATH_TLS_CA", settings.path_tls_ca),
    ):
        if value and not Path(value).is_file():
            raise ConfigError(key, value, "no such file")
    database = settings.database_path
    if settings.uses_postgres or not database.is_file() or database.stat().st_size == 0:
        return
    with database.open("rb") as file:
        if file.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
            raise ConfigError("PATH_SQLITE", str(database), "is not an SQLite database file")


def _run_server(
    settings: Settings, sock: socket.socket | None = None, channels: Channels | None = None
) -> int:
    """Serve until stopped. ``sock`` and ``channels``: one of API_PROCESSES, serving the
    socket the parent bound (cli/processes.py)."""
    import uvicorn

    from ..api.transport import (
        ConnectionLimits,
        connection_cap,
        raise_descriptor_limit,
        uvicorn_options,
    )
    from ..app import build
    from ..cipher_key import resolve, shared
    from ..sealing import Sealer
    from ..store.postgres.sealed import check_key as check_shared_key
    from ..store.sqlite.sealed import check_key

    # a wrong key stops here, with a message naming the setting, before anything starts
    if settings.database_url is not None:
        asyncio.run(check_shared_key(settings.database_url, Sealer(shared(settings.cipher_key))))
    else:
        key = resolve(settings.cipher_key, settings.database_path)
        check_key(settings.database_path, Sealer(key))
    server = build(settings, channels=channels)
    descriptors = raise_descriptor_limit()
    limits = ConnectionLimits(
        header_timeout_s=settings.http_header_timeout_s,
        body_timeout_s=settings.http_body_timeout_s,
        max_connections=connection_cap(
            descriptors, settings.max_in_flight, settings.max_connections
        ),
    )
    logger.info(
        "up to %d client connections (descriptor limit %d)", limits.max_connections, descriptors
    )
    config = uvicorn.Config(
        server.asgi,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        **uvicorn_options(limits, settings.http_keep_alive_s),
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # peers are clients, not a trusted proxy (throttle keys)
        ssl_certfile=settings.path_tls_cert,
        ssl_keyfile=settings.path_tls_key,
        ssl_ca_certs=settings.path_tls_ca,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 1,
    )
    uv = uvicorn.Server(config)

    def stop() -> None:
        uv.should_exit = True

    server.fatal.listen(stop)
    if server.election is not None:  # one of API_PROCESSES
        server.election.stopping = lambda: uv.should_exit
    # uvicorn re-raises the signal that stopped it once shutdown is done; with these
    # handlers in place that re-raise is a no-op, so a clean SIGTERM stop exits 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    tune_collector()
    # The SQLite writer thread lets go of the GIL at every statement and must take it
    # back from the event loop, which keeps it for up to the switch interval when busy
    # (5 ms by default): a transaction of a few hundred statements could take seconds
    # while the API is busy. A shorter interval bounds each wait, at the cost of more
    # forced switches.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    for warning in startup_warnings(settings):
        logger.warning("%s", warning)
    scheme = "https" if settings.path_tls_cert else "http"
    logger.info("tasks-server %s on %s://%s:%d", __version__, scheme, settings.host, settings.port)
    uv.run(sockets=None if sock is None else [sock])
    if server.fatal.error is not None:
        logger.critical("exiting: %s", server.fatal.error)
        return 1
    return 0 if uv.started else 1


def startup_warnings(settings: Settings) -> list[str]:
    """What the operator should hear at start-up about settings that are allowed but
    unsafe on a reachable server."""
    warnings = []
    if settings.owner_registration is None and settings.registration_mode == "open":
        warnings.append(
            "OWNER_REGISTRATION is open (no ADMIN_KEY is set): anyone who can reach this "
            "server can create an owner and make it send HTTP requests. Set ADMIN_KEY "
            "(registration then needs it) or OWNER_REGISTRATION=closed, or set "
            "OWNER_REGISTRATION=open to keep this and silence the warning."
        )
    return warnings


def _rotate_key(args: argparse.Namespace, settings: Settings) -> int:
    from ..cipher_key import rotate, rotate_shared
    from ..errors import BackupError, PreconditionFailed

    try:
        if settings.database_url is not None:
            report = rotate_shared(settings.cipher_key, settings.database_url, args.new_key_file)
        else:
            report = rotate(settings.cipher_key, settings.database_path, args.new_key_file)
    except (BackupError, PreconditionFailed) as exc:  # a server holds the database
        logger.error("rotate-key refused: %s", exc)
        return 1
    print(report)  # noqa: T201
    return 0


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from ..store.migrate import migrate
    from ..store.sqlite import connect

    if settings.database_url is not None:
        from ..store.postgres.migrate import migrate_url

        applied = asyncio.run(migrate_url(settings.database_url))
        print(f"PostgreSQL: {applied} migration(s) applied")  # noqa: T201
        return 0

    settings.database_path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(settings.database_path, settings.sqlite_synchronous)
    try:
        applied = migrate(conn)
    finally:
        conn.close()
    print(f"{settings.database_path}: {applied} migration(s) applied")  # noqa: T201
    return 0


def _migrate_data(args: argparse.Namespace, settings: Settings) -> int:
    from ..clock import SystemClock
    from ..errors import PreconditionFailed
    from ..store.transfer import copy_sqlite_to_postgres

    if not args.source.startswith("sqlite:"):
        raise ConfigError("--from", args.source, "must be sqlite:PATH")
    if not args.target.startswith(("postgresql://", "postgres://")):
        raise ConfigError("--to", args.target, "must be a postgresql:// URL")
    source = Path(args.source.removeprefix("sqlite:"))
    try:
        counts = asyncio.run(copy_sqlite_to_postgres(source, args.target, SystemClock().now_ms()))
    except PreconditionFailed as exc:
        print(f"tasks-server: migrate-data refused: {exc.message}", file=sys.stderr)  # noqa: T201
        return 1
    print(json.dumps({"copied": counts, "verified": True}, indent=2))  # noqa: T201
    return 0


def _check_config(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(describe(settings), indent=2, default=str))  # noqa: T201
    return 0


POSTGRES_BACKUPS = (
    "tasks-server: the database is PostgreSQL; back it up with its own tools: pg_dump for "
    "a logical copy, or base backups with WAL archiving for point-in-time recovery "
    "(docs/operations.md, 'Backups on PostgreSQL')"
)


def _backup(args: argparse.Namespace, settings: Settings) -> int:
    from ..backup.job import back_up_now
    from ..clock import SystemClock

    if settings.uses_postgres:
        print(POSTGRES_BACKUPS, file=sys.stderr)  # noqa: T201
        return 1

    try:
        published = back_up_now(settings, SystemClock().now_ms(), args.to)
    except ConfigError:
        raise
    except Exception as exc:  # a failed backup is an outcome to report, not a crash
        logger.error("backup failed: %s", exc)
        return 1
    report = {
        "location": published.location,
        "sha256": published.checksum,
        "bytes": published.size_bytes,
        "expired": list(published.removed),
    }
    print(json.dumps(report, indent=2))  # noqa: T201
    return 0


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    from ..backup.restore import restore_now
    from ..clock import SystemClock

    if settings.uses_postgres:
        print(POSTGRES_BACKUPS.replace("back it up", "restore it"), file=sys.stderr)  # noqa: T201
        return 1

    try:
        restored = restore_now(settings, args.source, SystemClock().now_ms(), args.force)
    except ConfigError:
        raise
    except Exception as exc:
        logger.error("restore failed: %s", exc)
        return 1
    report = {
        "database": str(restored.database),
        "source": restored.source,
        "sha256": restored.checksum,
        "replaced": None if restored.replaced is None else str(restored.replaced),
    }
    print(json.dumps(report, indent=2))  # noqa: T201
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
