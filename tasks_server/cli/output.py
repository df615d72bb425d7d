"""What the CLI's client commands print: aligned tables and ``label  value`` records,
times as UTC, one printer per kind of answer. ``--json`` output bypasses all of this."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(f"tasks-server: {text}\n")


def format_ms(value: Any) -> str:
    """Epoch ms as ``YYYY-MM-DD HH:MM:SS.mmmZ`` (UTC); 0 and None as ``-``."""
    if not isinstance(value, int | float) or value <= 0:
        return "-"
    moment = datetime.fromtimestamp(value / 1000, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """Left-aligned columns separated by two spaces, with a header line."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def fields(record: Mapping[str, Any], names: Sequence[tuple[str, str]]) -> str:
    """A record as ``label  value`` lines."""
    rows = [(label, cell(record.get(key), key)) for key, label in names]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def cell(value: Any, key: str) -> str:
    if key.endswith("At"):
        return format_ms(value)
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


_TASK_COLUMNS = (
    ("id", "ID"),
    ("state", "STATE"),
    ("statusCode", "STATUS"),
    ("createdAt", "CREATED"),
    ("estimateExecutionAt", "EXECUTES"),
    ("estimateEndAt", "ENDED"),
)
_TASK_FIELDS = (
    ("id", "id"),
    ("state", "state"),
    ("statusCode", "status code"),
    ("createdAt", "created"),
    ("estimateExecutionAt", "executes"),
    ("estimateEndAt", "ended"),
    ("metadata", "metadata"),
    ("response", "response (base64)"),
)
_OWNER_COLUMNS = (
    ("id", "ID"),
    ("name", "NAME"),
    ("createdAt", "CREATED"),
    ("tasksInQueue", "TASKS"),
    ("tasksInQueueLimit", "LIMIT"),
)
# what an administrator sees besides: the switches only it can set
_ADMIN_OWNER_COLUMNS = (*_OWNER_COLUMNS, ("disabled", "DISABLED"), ("requestBudget", "BUDGET"))


def rows(records: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    rows = [[cell(record.get(key), key) for key, _ in columns] for record in records]
    return table(rows, [label for _, label in columns])


def print_tasks(answer: Any, args: argparse.Namespace) -> None:
    out(rows(answer, _TASK_COLUMNS) if answer else "no tasks")


def print_task(answer: Any, args: argparse.Namespace) -> None:
    task = answer["task"] if "task" in answer else answer
    out(fields(task, _TASK_FIELDS))
    if "config" in answer:
        out("\nregistration:\n" + json.dumps(answer["config"], indent=2))
    if "attempts" in answer:
        rows = [
            [
                str(a["attempt"]),
                format_ms(a["startedAt"]),
                str(a["statusCode"]),
                f"{a['durationMs']:.1f}",
                a["error"] or "-",
            ]
            for a in answer["attempts"]
        ]
        headers = ["ATTEMPT", "STARTED", "STATUS", "MS", "ERROR"]
        out("\n" + (table(rows, headers) if rows else "no attempts yet"))


def print_owners(answer: Any, args: argparse.Namespace) -> None:
    out(rows(answer, _ADMIN_OWNER_COLUMNS) if answer else "no owners")


def print_owner(answer: Any, args: argparse.Namespace) -> None:
    out(fields(answer, [(key, label.lower()) for key, label in _OWNER_COLUMNS]))


def print_admin_owner(answer: Any, args: argparse.Namespace) -> None:
    out(fields(answer, [(key, label.lower()) for key, label in _ADMIN_OWNER_COLUMNS]))


def print_created_owner(answer: Any, args: argparse.Namespace) -> None:
    exports = f"export TASKS_OWNER_ID={answer['id']} TASKS_KEY={answer['key']}"
    if args.export:
        out(exports)
        return
    out(fields(answer, (("id", "id"), ("key", "key"))))
    out(f"\nThe key is shown only once. To use this owner:\n  {exports}")


def print_done(answer: Any, args: argparse.Namespace) -> None:
    subject = next(args.__dict__[k] for k in ("task_id", "owner_id", "name") if k in args)
    out(f"{subject}: done")
