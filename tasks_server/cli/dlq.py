"""The CLI's ``dlq`` commands: ``list``, ``replay`` and ``delete`` the caller's dead
letters (tasks that ended in ERROR) on a running server over HTTP.

They run through the same client as ``task`` (connection flags, ``--json``, exit codes).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import output
from .client import TasksClient
from .tasks import EXIT_CODES_HELP, add_command, connection_flags

_COLUMNS = (
    ("id", "ID"),
    ("failedAt", "FAILED"),
    ("statusCode", "STATUS"),
    ("attempts", "ATTEMPTS"),
    ("cycle", "CYCLE"),
    ("scheduleId", "SCHEDULE"),
)
_FILTERS = (("from_", "from"), ("to", "to"), ("status", "statusCode"), ("schedule", "schedule"))


def _filters(args: argparse.Namespace) -> dict[str, str | int | None]:
    query: dict[str, str | int | None] = {wire: getattr(args, name) for name, wire in _FILTERS}
    query["label"] = args.label
    return query


def _has_filter(args: argparse.Namespace) -> bool:
    return any(value is not None for value in _filters(args).values())


def _list(client: TasksClient, args: argparse.Namespace) -> Any:
    query = {**_filters(args), "limit": args.limit}
    items: list[Any] = []
    while True:
        page = client.call("GET", "/v1/dlq", query=query)
        items += page["items"]
        if not args.all or page["next"] is None:
            return items
        query["cursor"] = page["next"]


def _replay(client: TasksClient, args: argparse.Namespace) -> Any:
    if args.task_id:
        if _has_filter(args):
            raise ValueError("give a task id or filters, not both")
        return client.call("POST", f"/v1/dlq/{args.task_id}/replay")
    if not (_has_filter(args) or args.all):
        raise ValueError("give a task id, filters, or --all")
    query = {**_filters(args), "limit": args.limit, "rate": args.rate}
    return client.call("POST", "/v1/dlq/replay", query=query)


def _delete(client: TasksClient, args: argparse.Namespace) -> Any:
    if args.task_id:
        if _has_filter(args):
            raise ValueError("give a task id or filters, not both")
        return client.call("DELETE", f"/v1/dlq/{args.task_id}")
    query = _filters(args)
    if args.all:
        query["from"] = 0  # every failure since the epoch: the server wants a filter
    elif not _has_filter(args):
        raise ValueError("give a task id, filters, or --all")
    if not args.force and not _confirm("Really delete the matching dead letters?"):
        raise ValueError("not deleted (confirm, or pass -f)")
    return client.call("DELETE", "/v1/dlq", query={**query, "limit": args.limit})


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _print_list(answer: Any, args: argparse.Namespace) -> None:
    output.out(output.rows(answer, _COLUMNS) if answer else "no dead letters")


def _print_replayed(answer: Any, args: argparse.Namespace) -> None:
    if "replayed" in answer:
        more = " (more match: run again)" if answer["more"] else ""
        output.out(f"replayed {answer['replayed']}{more}")
    else:
        output.out(
            f"{answer['id']}: replayed, due {output.format_ms(answer['estimateExecutionAt'])}"
        )


def _print_deleted(answer: Any, args: argparse.Namespace) -> None:
    if "deleted" in answer:
        more = " (more match: run again)" if answer["more"] else ""
        output.out(f"deleted {answer['deleted']}{more}")
    else:
        output.out(f"{args.task_id}: deleted")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from", dest="from_", metavar="DATE", help="failed at or after (ISO 8601 or epoch ms)"
    )
    parser.add_argument("--to", metavar="DATE", help="failed before")
    parser.add_argument("--status", type=int, metavar="CODE", help="last status code")
    parser.add_argument("--schedule", metavar="NAME", help="made by this schedule (name or id)")
    parser.add_argument("--label", metavar="KEY[=VALUE]", help="a metadata key, or key=value")


def add_commands(commands: Any) -> None:
    """Register ``dlq`` on the top-level sub-command parser."""
    flags = connection_flags()
    dlq = commands.add_parser(
        "dlq",
        help="list, replay or delete tasks that ended in ERROR",
        description="The dead-letter queue: your tasks that ended in ERROR. A replay starts "
        "a new attempt cycle of the same task.",
        epilog=EXIT_CODES_HELP,
    )
    group = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = add_command(
        group, "list", "list dead letters, newest first", flags, _list, _print_list
    )
    _add_filters(listing)
    listing.add_argument("--limit", type=int, default=100, help="per page (default 100)")
    listing.add_argument("--all", action="store_true", help="every page, not only the first")
    replay = add_command(
        group,
        "replay",
        "replay one dead letter, or many by filter",
        flags,
        _replay,
        _print_replayed,
    )
    replay.add_argument("task_id", metavar="TASK_ID", nargs="?", help="one task")
    _add_filters(replay)
    replay.add_argument("--limit", type=int, default=100, help="at most (default 100, max 1000)")
    replay.add_argument("--rate", type=int, default=50, help="replays per second (default 50)")
    replay.add_argument("--all", action="store_true", help="without filters: any dead letter")
    delete = add_command(
        group, "delete", "delete one dead letter, or many by filter", flags, _delete, _print_deleted
    )
    delete.add_argument("task_id", metavar="TASK_ID", nargs="?", help="one task")
    _add_filters(delete)
    delete.add_argument("--limit", type=int, default=1000, help="at most (default and max 1000)")
    delete.add_argument("--all", action="store_true", help="without filters: every dead letter")
    delete.add_argument("-f", "--force", action="store_true", help="do not ask to confirm")
