"""The CLI's ``cron`` commands: ``add``, ``workflow``, ``list``, ``view``, ``runs``,
``delete``, ``pause`` and ``resume`` recurring schedules on a running server over HTTP.

They run through cli.tasks (same connection flags, ``--json``, output and exit codes).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

from . import output
from .client import TasksClient
from .tasks import (
    EXIT_CODES_HELP,
    Handler,
    Printer,
    add_attempt_flags,
    add_command,
    add_request_flags,
    connection_flags,
    task_body,
)
from .workflows import read_definition

_PAGE = 1000
_PREVIEW = 5
_LIST_COLUMNS = (
    ("name", "NAME"),
    ("schedule", "SCHEDULE"),
    ("timezone", "ZONE"),
    ("state", "STATE"),
    ("nextRunAt", "NEXT"),
    ("lastRunAt", "LAST"),
    ("runs", "RUNS"),
)
_RUN_COLUMNS = (
    ("id", "RUN"),
    ("state", "STATE"),
    ("dueAt", "SLOT"),
    ("finishedAt", "FINISHED"),
    ("error", "ERROR"),
)
_VIEW_FIELDS = (
    ("id", "id"),
    ("name", "name"),
    ("schedule", "schedule"),
    ("timezone", "time zone"),
    ("state", "state"),
    ("startAt", "starts"),
    ("endAt", "ends"),
    ("maxRuns", "max runs"),
    ("runs", "runs"),
    ("misfirePolicy", "misfire"),
    ("overlapPolicy", "overlap"),
    ("catchUpLimit", "catch-up limit"),
    ("lastRunAt", "last run"),
    ("lastTaskId", "last task"),
    ("lastRunId", "last run"),
    ("nextRunAt", "next run"),
)


def _path(name: str, action: str | None = None) -> str:
    path = f"/v1/schedules/{quote(name, safe='')}"
    return f"{path}/{action}" if action else path


# -- handlers -----------------------------------------------------------------------------


def schedule_body(args: argparse.Namespace) -> dict[str, Any]:
    """The creation body: the task part as ``task add`` builds it, plus the timing."""
    body = task_body(args)
    body.update(_timing(args))
    return body


def workflow_schedule_body(args: argparse.Namespace) -> dict[str, Any]:
    """The creation body of a schedule that starts runs of the workflow in FILE (the body
    of ``workflow run``), plus the timing."""
    return {"workflow": read_definition(args.file), **_timing(args)}


def _timing(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"name": args.name, "schedule": args.schedule}
    options = {
        "timezone": args.tz,
        "startAt": _date(args.start),
        "endAt": _date(args.end),
        "maxRuns": args.max_runs,
        "misfirePolicy": args.misfire,
        "overlapPolicy": args.overlap,
        "catchUpLimit": args.catch_up_limit,
    }
    body.update({k: v for k, v in options.items() if v is not None})
    return body


def _date(text: str | None) -> str | int | None:
    return int(text) if text and text.isdigit() else text


def _runs(client: TasksClient, args: argparse.Namespace) -> Any:
    return client.call("GET", _path(args.name, "runs"), query={"limit": args.limit})


def _print_runs(answer: Any, args: argparse.Namespace) -> None:
    output.out(output.rows(answer, _RUN_COLUMNS) if answer else "no runs")


def _all_schedules(client: TasksClient, args: argparse.Namespace) -> list[Any]:
    found: list[Any] = []
    while True:
        page = client.call("GET", "/v1/schedules", query={"limit": _PAGE, "offset": len(found)})
        found += page
        if len(page) < _PAGE:
            return found


def _view(client: TasksClient, args: argparse.Namespace) -> Any:
    schedule = client.call("GET", _path(args.name))
    schedule["next"] = client.call("GET", _path(args.name, "next"), query={"n": _PREVIEW})
    return schedule


def _delete(client: TasksClient, args: argparse.Namespace) -> Any:
    if not args.force and not _confirm(f"Really delete schedule {args.name}?"):
        raise ValueError(f"{args.name}: not deleted (confirm, or pass -f)")
    return client.call("DELETE", _path(args.name))


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


# -- printers -----------------------------------------------------------------------------


def _print_list(answer: Any, args: argparse.Namespace) -> None:
    if args.names:
        for schedule in answer:
            output.out(schedule["name"])
        return
    output.out(output.rows(answer, _LIST_COLUMNS) if answer else "no schedules")


def _print_schedule(answer: Any, args: argparse.Namespace) -> None:
    output.out(output.fields(answer, _VIEW_FIELDS))
    if "httpRequest" in answer:
        template = {k: answer[k] for k in ("httpRequest", "config", "metadata") if k in answer}
        output.out("\ntask template:\n" + json.dumps(template, indent=2))
    if "workflow" in answer:
        output.out("\nworkflow:\n" + json.dumps(answer["workflow"], indent=2))
    if "next" in answer:
        slots = [f"  {slot['local']}" for slot in answer["next"]]
        output.out("\nnext runs:\n" + ("\n".join(slots) if slots else "  none"))


def _print_done(answer: Any, args: argparse.Namespace) -> None:
    output.out(f"{args.name}: done")


# -- parser -------------------------------------------------------------------------------

_NAME_HELP = "the schedule's name (or its id)"


def _add_timing_flags(add: argparse.ArgumentParser) -> None:
    add.add_argument("--tz", help="IANA time zone of the cron fields (default UTC)")
    add.add_argument("--start", metavar="DATE", help="no run before (ISO 8601 or epoch ms)")
    add.add_argument("--end", metavar="DATE", help="no run after (ISO 8601 or epoch ms)")
    add.add_argument("--max-runs", type=int, metavar="N", help="finish after N runs")
    add.add_argument(
        "--misfire",
        choices=["skip", "run_once", "run_all"],
        help="slots missed while the server was down (default run_once)",
    )
    add.add_argument(
        "--overlap",
        choices=["allow", "skip", "queue"],
        help="when the previous run is still pending (default allow)",
    )
    add.add_argument("--catch-up-limit", type=int, metavar="N", help="run_all bound (default 10)")


def _add_name_and_schedule(add: argparse.ArgumentParser) -> None:
    add.add_argument("name", metavar="NAME", help="a-z first, then a-z 0-9 . _ - (64 at most)")
    add.add_argument(
        "schedule",
        metavar="SCHEDULE",
        help="cron ('*/5 * * * *', 6 fields with seconds first), @hourly/@daily/@weekly/"
        "@monthly/@yearly, or '@every 10m'",
    )


def _add_workflow(group: Any, flags: argparse.ArgumentParser) -> None:
    add = add_command(
        group,
        "workflow",
        "create a schedule that starts a run of the workflow in FILE at every occurrence",
        flags,
        lambda c, a: c.call("POST", "/v1/schedules", workflow_schedule_body(a)),
        _print_schedule,
    )
    _add_name_and_schedule(add)
    add.add_argument(
        "file", metavar="FILE", help="the workflow, as for 'workflow run' (JSON, '-' for stdin)"
    )
    _add_timing_flags(add)


def _add_add(group: Any, flags: argparse.ArgumentParser) -> None:
    add = add_command(
        group,
        "add",
        "create a schedule: call URL at every occurrence of SCHEDULE",
        flags,
        lambda c, a: c.call("POST", "/v1/schedules", schedule_body(a)),
        _print_schedule,
    )
    _add_name_and_schedule(add)
    add.add_argument("target_url", metavar="URL", help="the URL each run calls")
    add_request_flags(add)
    _add_timing_flags(add)
    add_attempt_flags(add, "copied to each run's task (repeatable, at most 8)")
    add.add_argument(
        "--body-file",
        metavar="FILE",
        help="a task registration body (JSON, '-' for stdin) for options without a flag",
    )
    add.set_defaults(delay=None, at=None)  # task_body reads them; a schedule has neither


def add_commands(commands: Any) -> None:
    """Register ``cron`` on the top-level sub-command parser."""
    flags = connection_flags()
    cron = commands.add_parser(
        "cron",
        help="manage recurring schedules on a running server",
        description="Manage recurring schedules (cron, @every) on a running server over HTTP. "
        "Each run creates an ordinary task, or starts a workflow run ('cron workflow').",
        epilog=EXIT_CODES_HELP,
    )
    group = cron.add_subparsers(dest="cron_command", required=True, metavar="ACTION")
    _add_add(group, flags)
    _add_workflow(group, flags)
    listing = add_command(group, "list", "list your schedules", flags, _all_schedules, _print_list)
    listing.add_argument("--names", action="store_true", help="print the names only")
    view = add_command(
        group, "view", "show a schedule and its next runs", flags, _view, _print_schedule
    )
    view.add_argument("name", metavar="NAME", help=_NAME_HELP)
    runs = add_command(
        group, "runs", "list the workflow runs a schedule started", flags, _runs, _print_runs
    )
    runs.add_argument("name", metavar="NAME", help=_NAME_HELP)
    runs.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    delete = add_command(
        group, "delete", "delete a schedule (its tasks stay)", flags, _delete, _print_done
    )
    delete.add_argument("name", metavar="NAME", help=_NAME_HELP)
    delete.add_argument("-f", "--force", action="store_true", help="do not ask to confirm")
    actions: list[tuple[str, str, Handler, Printer]] = [
        (
            "pause",
            "pause a schedule",
            lambda c, a: c.call("PATCH", _path(a.name, "pause")),
            _print_schedule,
        ),
        (
            "resume",
            "resume a paused schedule",
            lambda c, a: c.call("PATCH", _path(a.name, "resume")),
            _print_schedule,
        ),
    ]
    for name, help_text, handler, printer in actions:
        action = add_command(group, name, help_text, flags, handler, printer)
        action.add_argument("name", metavar="NAME", help=_NAME_HELP)
