"""The CLI's ``workflow`` commands: ``run`` a workflow from a JSON file, ``list``, ``view``
(drawn as a tree of steps), ``retry`` and ``cancel`` runs on a running server over HTTP.

They run through the client commands' machinery (connection flags, ``--json``, exit codes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import output
from .client import TasksClient
from .tasks import EXIT_CODES_HELP, Handler, Printer, add_command, connection_flags

_LIST_COLUMNS = (
    ("id", "ID"),
    ("name", "NAME"),
    ("state", "STATE"),
    ("createdAt", "CREATED"),
    ("finishedAt", "FINISHED"),
)
_MARKS = {
    "SUCCESS": "✔",
    "ERROR": "✘",
    "RUNNING": "▶",
    "WAITING": "…",
    "SKIPPED": "↷",
    "CANCELLED": "■",
}


def _path(run_id: str, action: str | None = None) -> str:
    path = f"/v1/workflows/{run_id}"
    return f"{path}/{action}" if action else path


def read_definition(source: str) -> Any:
    """The JSON body of a run, from a file or standard input ('-')."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    return json.loads(text)


def _run(client: TasksClient, args: argparse.Namespace) -> Any:
    run = client.call("POST", "/v1/workflows", read_definition(args.file))
    if args.wait is not None:
        run = client.call("GET", _path(run["id"], "result"), query={"wait": args.wait})
    return run


def _list(client: TasksClient, args: argparse.Namespace) -> Any:
    query: dict[str, Any] = {"limit": args.limit}
    if args.state:
        query["state"] = args.state
    if args.name:
        query["name"] = args.name
    return client.call("GET", "/v1/workflows", query=query)["runs"]


# -- printers -------------------------------------------------------------------------------


def tree(run: dict[str, Any]) -> list[str]:
    """The run's steps as a tree: each step under the dependency declared last before it,
    so a chain reads top to bottom; a step with several dependencies names the others."""
    steps = {step["id"]: step for step in run["steps"]}
    children: dict[str | None, list[str]] = {}
    for step in run["steps"]:
        deps = step["dependsOn"]
        parent = deps[-1] if deps else None
        children.setdefault(parent, []).append(step["id"])
    lines: list[str] = []

    def draw(step_id: str, prefix: str, last: bool) -> None:
        step = steps[step_id]
        branch = "└─ " if last else "├─ "
        detail = [step["state"]]
        if step["attempts"]:
            detail.append(f"{step['attempts']} attempt{'s' if step['attempts'] > 1 else ''}")
        if step["statusCode"]:
            detail.append(f"HTTP {step['statusCode']}")
        if len(step["dependsOn"]) > 1:
            detail.append("after " + ", ".join(step["dependsOn"]))
        line = f"{prefix}{branch}{_MARKS.get(step['state'], '?')} {step_id}  ({'; '.join(detail)})"
        lines.append(line)
        if step["error"]:
            lines.append(f"{prefix}{'   ' if last else '│  '}   error: {step['error']}")
        kids = children.get(step_id, [])
        for index, kid in enumerate(kids):
            draw(kid, prefix + ("   " if last else "│  "), index == len(kids) - 1)

    roots = children.get(None, [])
    for index, root in enumerate(roots):
        draw(root, "", index == len(roots) - 1)
    return lines


def _print_run(answer: Any, args: argparse.Namespace) -> None:
    head = f"{answer['name']} {answer['id']}: {answer['state']}"
    if answer.get("error"):
        head += f" ({answer['error']})"
    output.out("\n".join([head, *tree(answer)]))


def _print_list(answer: Any, args: argparse.Namespace) -> None:
    output.out(output.rows(answer, _LIST_COLUMNS) if answer else "no workflow runs")


# -- parser ---------------------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    """Register ``workflow`` on the top-level sub-command parser."""
    flags = connection_flags()
    workflow = commands.add_parser(
        "workflow",
        help="run and follow multi-step workflows on a running server",
        description="Start workflow runs from a JSON definition and follow their steps "
        "(docs/workflows.md).",
        epilog=EXIT_CODES_HELP,
    )
    group = workflow.add_subparsers(dest="workflow_command", required=True, metavar="ACTION")
    start = add_command(
        group, "run", "start a run from FILE.json ('-': stdin)", flags, _run, _print_run
    )
    start.add_argument("file", metavar="FILE", help="the POST /v1/workflows body, as JSON")
    start.add_argument(
        "--wait", type=float, metavar="SECONDS", help="wait up to SECONDS (≤ 60) for the result"
    )
    listing = add_command(group, "list", "list your runs, newest first", flags, _list, _print_list)
    listing.add_argument(
        "--state",
        choices=["PENDING", "RUNNING", "SUCCESS", "ERROR", "CANCELLED"],
        help="only runs in this state",
    )
    listing.add_argument("--name", help="only runs of this workflow name")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (1-1000)")
    actions: list[tuple[str, str, Handler, Printer]] = [
        (
            "view",
            "show a run as a tree of steps",
            lambda c, a: c.call("GET", _path(a.run_id)),
            _print_run,
        ),
        (
            "retry",
            "run the failed steps again, and what follows them",
            lambda c, a: c.call("POST", _path(a.run_id, "retry")),
            _print_run,
        ),
        (
            "cancel",
            "cancel a run: running steps are revoked",
            lambda c, a: c.call("POST", _path(a.run_id, "cancel")),
            _print_run,
        ),
    ]
    for name, help_text, handler, printer in actions:
        action = add_command(group, name, help_text, flags, handler, printer)
        action.add_argument("run_id", metavar="RUN_ID", help="the run's id")
