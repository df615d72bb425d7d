"""The CLI's client commands: ``owner create|list|view|delete`` and
``task add|list|view|pause|resume|revoke|run|delete``, sent to a running server over HTTP.

Output is a human table by default and the server's JSON with ``--json``. Exit codes:
0 done, 1 the server refused the request, 2 bad usage or missing credentials,
3 the server could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import DEFAULT_SERVER_URL, load_client
from ..errors import ConfigError
from . import output, owner_admin
from .client import ApiError, MissingCredentials, TasksClient, Unreachable

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_CODES_HELP = (
    "exit codes: 0 done, 1 the server refused the request (its message is printed), "
    "2 bad usage or missing credentials, 3 the server could not be reached"
)
_TASK_ID_HELP = "the task's id (24 characters, from task add or task list)"

Handler = Callable[[TasksClient, argparse.Namespace], Any]
Printer = Callable[[Any, argparse.Namespace], None]


# -- commands ---------------------------------------------------------------------------


def _key_value(text: str, separator: str) -> tuple[str, str]:
    name, sep, value = text.partition(separator)
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME{separator}VALUE, got {text!r}")
    return name.strip(), value.strip() if separator == ":" else value


def parse_header(text: str) -> tuple[str, str]:
    return _key_value(text, ":")


def parse_pair(text: str) -> tuple[str, str]:
    return _key_value(text, "=")


def _read_json(source: str) -> Any:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    return json.loads(text)


def task_body(args: argparse.Namespace) -> dict[str, Any]:
    """The registration body: ``--body-file`` as the base, then every flag given."""
    body: dict[str, Any] = _read_json(args.body_file) if args.body_file else {}
    request = body.setdefault("httpRequest", {})
    config = body.setdefault("config", {})
    request["url"] = args.target_url
    request["method"] = args.method or request.get("method", "GET")
    for name, pairs in (("headers", args.header), ("query", args.query)):
        if pairs:
            request[name] = {**request.get(name, {}), **dict(pairs)}
    if args.data is not None:
        request["data"] = args.data
    if args.json_data is not None:
        request["data"] = json.loads(args.json_data)
    options = {
        "executionDelay": args.delay,
        "executeAt": int(args.at) if args.at and args.at.isdigit() else args.at,
        "retry": args.retry,
        "retryInterval": args.retry_interval,
        "timeout": args.attempt_timeout,
    }
    config.update({k: v for k, v in options.items() if v is not None})
    if args.metadata:
        body["metadata"] = {**body.get("metadata", {}), **dict(args.metadata)}
    if not config:
        del body["config"]
    return body


def _task_view(client: TasksClient, args: argparse.Namespace) -> Any:
    task = client.get_task(args.task_id)
    if not (args.config or args.attempts):
        return task
    answer: dict[str, Any] = {"task": task}
    if args.config:
        answer["config"] = client.get_config(args.task_id)
    if args.attempts:
        answer["attempts"] = client.get_attempts(args.task_id)
    return answer


def _task_list(client: TasksClient, args: argparse.Namespace) -> Any:
    return client.list_tasks(
        state=args.state, limit=args.limit, offset=args.offset, order=args.order, sort=args.sort
    )


# -- parser -----------------------------------------------------------------------------


def connection_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("server and credentials")
    group.add_argument(
        "--server",
        metavar="URL",
        help=f"server base URL (TASKS_URL, default {DEFAULT_SERVER_URL})",
    )
    group.add_argument("--owner-id", metavar="ID", help="owner id (TASKS_OWNER_ID)")
    group.add_argument(
        "--key",
        metavar="KEY",
        help="owner key (TASKS_KEY; prefer the variable: flags show in process lists)",
    )
    group.add_argument(
        "--admin-key",
        metavar="KEY",
        help="the server's ADMIN_KEY, for owner list (TASKS_ADMIN_KEY, else ADMIN_KEY)",
    )
    group.add_argument(
        "--cacert", metavar="FILE", help="CA bundle for an HTTPS server (TASKS_CACERT)"
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        metavar="SECONDS",
        help="give up on the server after this long (TASKS_TIMEOUT_S, default 30)",
    )
    group.add_argument(
        "--json", action="store_true", help="print the server's JSON answer instead of a table"
    )
    return flags


def add_command(
    group: Any,
    name: str,
    help_text: str,
    flags: argparse.ArgumentParser,
    handler: Handler,
    printer: Printer,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(
        name, help=help_text, description=help_text, parents=[flags], epilog=EXIT_CODES_HELP
    )
    parser.set_defaults(client_handler=handler, client_printer=printer)
    return parser


def _add_owner_commands(commands: Any, flags: argparse.ArgumentParser) -> None:
    owner = commands.add_parser(
        "owner",
        help="manage owners (API accounts) on a running server",
        description="Manage owners (API accounts) on a running server over HTTP.",
        epilog=EXIT_CODES_HELP,
    )
    group = owner.add_subparsers(dest="owner_command", required=True, metavar="ACTION")
    create = add_command(
        group,
        "create",
        "register an owner and print its id and key (shown once)",
        flags,
        lambda c, a: c.register_owner(a.name),
        output.print_created_owner,
    )
    create.add_argument("name", help="5-32 characters: a-z, 0-9 and inner single hyphens")
    create.add_argument(
        "--export",
        action="store_true",
        help="print only 'export TASKS_OWNER_ID=… TASKS_KEY=…' for eval in a shell",
    )
    add_command(
        group,
        "list",
        "list every owner (needs the server's ADMIN_KEY)",
        flags,
        lambda c, a: c.list_owners(),
        output.print_owners,
    )
    view = add_command(
        group,
        "view",
        "show your owner record",
        flags,
        lambda c, a: c.get_owner(a.name),
        output.print_owner,
    )
    view.add_argument("name", help="your owner name")
    delete = add_command(
        group,
        "delete",
        "delete your owner and its finished tasks (it must have no unfinished task)",
        flags,
        lambda c, a: c.delete_owner(a.name),
        output.print_done,
    )
    delete.add_argument("name", help="your owner name")
    owner_admin.add_commands(group, flags, add_command)


def add_request_flags(command: argparse.ArgumentParser) -> None:
    """The flags that describe the HTTP call: method, headers, query and body."""
    command.add_argument("-X", "--method", help="GET, POST, PUT, PATCH or DELETE (default GET)")
    command.add_argument(
        "-H",
        "--header",
        type=parse_header,
        action="append",
        metavar="'NAME: VALUE'",
        help="a request header (repeatable)",
    )
    command.add_argument(
        "--query",
        type=parse_pair,
        action="append",
        metavar="NAME=VALUE",
        help="a query parameter appended to the URL (repeatable)",
    )
    body = command.add_mutually_exclusive_group()
    body.add_argument("-d", "--data", metavar="TEXT", help="a text body")
    body.add_argument("--json-data", metavar="JSON", help="a JSON object body")


def add_attempt_flags(command: argparse.ArgumentParser, metadata_help: str) -> None:
    """The flags for retries, the attempt timeout and metadata."""
    command.add_argument("--retry", type=int, metavar="N", help="retries after a failed attempt")
    command.add_argument(
        "--retry-interval", type=int, metavar="MS", help="base wait between retries"
    )
    command.add_argument(
        "--attempt-timeout", type=int, metavar="MS", help="timeout of each attempt"
    )
    command.add_argument(
        "--metadata", type=parse_pair, action="append", metavar="KEY=VALUE", help=metadata_help
    )


def _add_task_add(group: Any, flags: argparse.ArgumentParser) -> None:
    add = add_command(
        group,
        "add",
        "register a task: call TARGET_URL later, with retries",
        flags,
        lambda c, a: c.register_task(task_body(a)),
        output.print_task,
    )
    add.add_argument("target_url", metavar="TARGET_URL", help="the URL the server will call")
    add_request_flags(add)
    when = add.add_mutually_exclusive_group()
    when.add_argument("--delay", type=int, metavar="MS", help="run after this many ms")
    when.add_argument("--at", metavar="DATE", help="run at this time (ISO 8601 or epoch ms)")
    add_attempt_flags(add, "metadata stored with the task (repeatable, at most 8)")
    add.add_argument(
        "--body-file",
        metavar="FILE",
        help="a whole registration body (JSON, '-' for stdin) for options without a flag; "
        "flags given override its fields",
    )


def _add_task_commands(commands: Any, flags: argparse.ArgumentParser) -> None:
    task = commands.add_parser(
        "task",
        help="manage your tasks on a running server",
        description="Manage your tasks on a running server over HTTP.",
        epilog=EXIT_CODES_HELP,
    )
    group = task.add_subparsers(dest="task_command", required=True, metavar="ACTION")
    _add_task_add(group, flags)
    listing = add_command(group, "list", "list your tasks", flags, _task_list, output.print_tasks)
    listing.add_argument("--state", help="RUNNING, PAUSED, SUCCESS, ERROR or REVOKED")
    listing.add_argument("--limit", type=int, help="at most this many (1-1000, default 10)")
    listing.add_argument("--offset", type=int, help="skip this many (default 0)")
    listing.add_argument(
        "--order",
        choices=["createdAt", "estimateEndAt", "estimateExecutionAt"],
        help="sort key (default createdAt)",
    )
    listing.add_argument("--sort", choices=["asc", "desc"], help="direction (default asc)")
    view = add_command(group, "view", "show one task", flags, _task_view, output.print_task)
    view.add_argument("task_id", metavar="TASK_ID", help=_TASK_ID_HELP)
    view.add_argument("--config", action="store_true", help="also show the registration")
    view.add_argument("--attempts", action="store_true", help="also show the attempt history")
    actions: list[tuple[str, str, Handler, Printer]] = [
        ("pause", "pause a RUNNING task", lambda c, a: c.pause(a.task_id), output.print_done),
        ("resume", "resume a PAUSED task", lambda c, a: c.resume(a.task_id), output.print_task),
        ("revoke", "cancel a task for good", lambda c, a: c.revoke(a.task_id), output.print_done),
        ("run", "run a RUNNING task now", lambda c, a: c.execute(a.task_id), output.print_done),
        (
            "delete",
            "delete a task and its history",
            lambda c, a: c.delete_task(a.task_id),
            output.print_done,
        ),
    ]
    for name, help_text, handler, printer in actions:
        action = add_command(group, name, help_text, flags, handler, printer)
        action.add_argument("task_id", metavar="TASK_ID", help=_TASK_ID_HELP)


def add_commands(commands: Any) -> None:
    """Register ``owner`` and ``task`` on the top-level sub-command parser."""
    flags = connection_flags()
    _add_owner_commands(commands, flags)
    _add_task_commands(commands, flags)


def is_client_command(args: argparse.Namespace) -> bool:
    return hasattr(args, "client_handler")


def run(args: argparse.Namespace) -> int:
    """Run a parsed client command; returns the exit code (see the module docstring)."""
    try:
        settings = load_client(
            url=args.server,
            owner_id=args.owner_id,
            key=args.key,
            admin_key=args.admin_key,
            cacert=args.cacert,
            timeout_s=args.request_timeout,
        )
        client = TasksClient(
            settings.url,
            settings.owner_id,
            settings.key,
            settings.admin_key,
            settings.timeout_s,
            settings.cacert,
        )
        answer = args.client_handler(client, args)
    except (ConfigError, MissingCredentials, OSError, ValueError) as exc:
        output.err(str(exc))
        return EXIT_USAGE
    except ApiError as exc:
        output.err(f"the server refused: {exc}")
        return EXIT_REFUSED
    except Unreachable as exc:
        output.err(f"cannot reach the server: {exc}")
        return EXIT_UNREACHABLE
    if args.json:
        output.out(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        args.client_printer(answer, args)
    return EXIT_OK
