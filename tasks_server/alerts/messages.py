"""Alert messages: subject, text and JSON payload for each kind of message; pure.

A message says which rule fired and what failed, when, the last status and error, and
links to the task (under the server's ``PUBLIC_URL``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..alerting import AlertRule, Incident
from .incidents import MessageKind

_HEADLINES = {
    MessageKind.ALERT: "failing",
    MessageKind.DIGEST: "still failing",
    MessageKind.RESOLVED: "resolved",
    MessageKind.TEST: "test message",
}


@dataclass(frozen=True, slots=True)
class Message:
    kind: MessageKind
    subject: str
    text: str
    payload: dict[str, Any]


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def task_link(public_url: str, task_id: str | None) -> str | None:
    return None if task_id is None else f"{public_url.rstrip('/')}/v1/queues/{task_id}"


def _what(rule: AlertRule, incident: Incident) -> str:
    scope = rule.scope
    where = "any of your tasks"
    if scope.schedule_id is not None or incident.subject:
        where = f"schedule {scope.schedule_id or incident.subject}"
    elif scope.label is not None:
        key, value = scope.label
        where = f"tasks labelled {key}" + ("" if value is None else f"={value}")
    return f"{rule.on.value} in {where}"


def compose(
    rule: AlertRule,
    incident: Incident,
    kind: MessageKind,
    repeats: int,
    public_url: str,
    now_ms: int,
) -> Message:
    """The message of ``kind`` for ``rule``'s incident (after the step that made it);
    ``repeats`` is how many failures it reports that no earlier message did."""
    link = task_link(public_url, incident.last_task_id)
    subject = f"[tasks-server] {rule.name}: {_HEADLINES[kind]}"
    if repeats:
        subject += f" ({repeats} more failure{'s' if repeats > 1 else ''})"
    lines = [f"Rule: {rule.name} ({_what(rule, incident)})", f"Status: {_HEADLINES[kind]}"]
    if kind is MessageKind.TEST:
        lines.append("This is a test of the rule's channel; nothing failed.")
    else:
        lines += [
            f"Last failure: {iso(incident.last_at_ms)}",
            f"Last failed task: {incident.last_task_id}",
            f"Last status: {incident.last_status}",
            f"Last error: {incident.last_error or '-'}",
            f"Failures since the incident opened at {iso(incident.opened_at_ms)}: "
            f"{incident.failures}",
        ]
        if link is not None:
            lines.append(f"Link: {link}")
    if kind is MessageKind.RESOLVED:
        lines.append(f"Resolved at {iso(now_ms)}.")
    payload = {
        "type": f"alert.{kind.value}",
        "rule": {"id": rule.id, "name": rule.name, "on": rule.on.value},
        "subject": incident.subject or None,
        "openedAt": incident.opened_at_ms,
        "failures": incident.failures,
        "repeats": repeats,
        "lastTaskId": incident.last_task_id,
        "lastStatusCode": incident.last_status,
        "lastError": incident.last_error,
        "lastFailureAt": incident.last_at_ms,
        "taskUrl": link,
        "at": now_ms,
    }
    return Message(kind, subject, "\n".join(lines) + "\n", payload)
