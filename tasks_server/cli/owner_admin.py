"""The administrator's ``owner`` commands (the server's ADMIN_KEY): disable, enable,
limits, rotate-key and remove."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from . import output
from .client import TasksClient

Handler = Callable[[TasksClient, argparse.Namespace], Any]
AddCommand = Callable[..., argparse.ArgumentParser]  # cli.tasks.add_command


def add_commands(group: Any, flags: argparse.ArgumentParser, add_command: AddCommand) -> None:
    """The administrator's owner commands (the server's ADMIN_KEY)."""
    for name, disabled, help_text in (
        ("disable", True, "disable an owner: its key stops working (needs ADMIN_KEY)"),
        ("enable", False, "enable a disabled owner again (needs ADMIN_KEY)"),
    ):
        command = add_command(
            group,
            name,
            help_text,
            flags,
            _set_disabled(disabled),
            output.print_admin_owner,
        )
        command.add_argument("owner_id", metavar="OWNER_ID", help="the owner's id")
    budget = add_command(
        group,
        "limits",
        "set an owner's queue limit or API request budget (needs ADMIN_KEY)",
        flags,
        lambda c, a: c.change_owner(a.owner_id, **_limit_changes(a)),
        output.print_admin_owner,
    )
    budget.add_argument("owner_id", metavar="OWNER_ID", help="the owner's id")
    budget.add_argument(
        "--tasks-in-queue-limit", type=int, metavar="N", help="unfinished tasks (0: unlimited)"
    )
    budget.add_argument(
        "--request-budget",
        metavar="N",
        help="API requests per minute, or 'default' for the server's REQUEST_BUDGET",
    )
    remove = add_command(
        group,
        "remove",
        "delete any owner with no unfinished task, and its finished tasks (needs ADMIN_KEY)",
        flags,
        lambda c, a: c.remove_owner(a.owner_id),
        output.print_done,
    )
    remove.add_argument("owner_id", metavar="OWNER_ID", help="the owner's id")
    rotate = add_command(
        group,
        "rotate-key",
        "give an owner a new key, shown once; the old key stops working (needs ADMIN_KEY)",
        flags,
        lambda c, a: c.rotate_owner_key(a.owner_id),
        output.print_created_owner,
    )
    rotate.add_argument("owner_id", metavar="OWNER_ID", help="the owner's id")
    rotate.set_defaults(export=False)


def _set_disabled(disabled: bool) -> Handler:
    return lambda c, a: c.change_owner(a.owner_id, disabled=disabled)


def _limit_changes(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if args.tasks_in_queue_limit is not None:
        changes["tasksInQueueLimit"] = args.tasks_in_queue_limit
    if args.request_budget is not None:
        default = args.request_budget == "default"
        changes["requestBudget"] = None if default else int(args.request_budget)
    return changes
