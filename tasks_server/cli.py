"""Command line: ``tasks-server serve|migrate|check-config``.

Reads Settings once (environment, ``.env``, flags), configures logging once, runs the
command, and returns a process exit code: 0 success, 1 failure, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from . import log as log_setup
from .config import Settings, describe, load
from .errors import ConfigError

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
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = {key: getattr(args, key, None) for key in ("host", "port", "path_sqlite")}
    try:
        settings = load(env_file=args.env_file, **overrides)
    except ConfigError as exc:
        print(f"tasks-server: configuration error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    log_setup.configure(settings.log_level, settings.log_format)
    run: Command = args.run
    return run(args, settings)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from .app import build

    server = build(settings)
    config = uvicorn.Config(
        server.asgi,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        ssl_certfile=settings.path_tls_cert,
        ssl_keyfile=settings.path_tls_key,
        ssl_ca_certs=settings.path_tls_ca,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 1,
    )
    uv = uvicorn.Server(config)

    def stop() -> None:
        uv.should_exit = True

    server.on_fatal = stop
    scheme = "https" if settings.path_tls_cert else "http"
    logger.info("tasks-server %s on %s://%s:%d", __version__, scheme, settings.host, settings.port)
    uv.run()
    return 0 if uv.started else 1


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from .store.migrate import migrate
    from .store.sqlite import connect

    settings.database_path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(settings.database_path, settings.sqlite_synchronous)
    try:
        applied = migrate(conn)
    finally:
        conn.close()
    print(f"{settings.database_path}: {applied} migration(s) applied")  # noqa: T201
    return 0


def _check_config(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(describe(settings), indent=2, default=str))  # noqa: T201
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
