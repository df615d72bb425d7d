"""Alert rules, incidents and deliveries as domain values (frozen, typed, no I/O).

The logic that reads them lives in ``alerts/``; the stores keep them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .models import HttpRequest


class AlertEvent(StrEnum):
    """What a rule watches; the values are the wire strings."""

    TASK_FAILED = "task.failed"  # a task reached ERROR (its last retry failed)
    ATTEMPT_FAILED = "attempt.failed"  # an attempt failed (the N-th in a row of one task)
    SCHEDULE_FAILED = "schedule.failed"  # a schedule's run ended in ERROR (N in a row)
    RESPONSE_UNEXPECTED = "response.unexpected"  # a response broke the rule's expectation


@dataclass(frozen=True, slots=True)
class Expectation:
    """What a response should be: a status among ``statuses`` (any when empty), a body
    containing ``body_contains``, a body where ``body_regex`` matches (re.search)."""

    statuses: tuple[int, ...] = ()
    body_contains: str | None = None
    body_regex: str | None = None


@dataclass(frozen=True, slots=True)
class Scope:
    """Which tasks a rule watches: a schedule's, those with a label, or (neither) all."""

    schedule_id: str | None = None
    label: tuple[str, str | None] | None = None  # a metadata key, or key and value


@dataclass(frozen=True, slots=True)
class AlertRule:
    """A rule and its channel: e-mail to ``email_to``, or a call to ``webhook``."""

    id: str
    owner_id: str
    name: str
    on: AlertEvent
    scope: Scope
    consecutive: int  # failures in a row before an incident opens (per task for attempts)
    expect: Expectation | None
    email_to: tuple[str, ...] | None
    webhook: HttpRequest | None  # the server supplies the JSON body
    created_at_ms: int
    updated_at_ms: int


@dataclass(frozen=True, slots=True)
class Incident:
    """The alert state of one rule and subject ("" or, for schedule rules, a schedule)."""

    rule_id: str
    subject: str
    is_open: bool = False
    streak: int = 0  # failures in a row
    opened_at_ms: int | None = None
    failures: int = 0  # while open, in all
    unreported: int = 0  # while open, since the last message
    last_sent_at_ms: int | None = None
    last_task_id: str | None = None
    last_status: int = 0
    last_error: str | None = None
    last_at_ms: int | None = None


class DeliveryStatus(StrEnum):
    SENT = "sent"  # the SMTP server accepted the mail
    QUEUED = "queued"  # the webhook task was created (its own history tells the rest)
    FAILED = "failed"  # could not be sent; ``error`` says why
    SUPPRESSED = "suppressed"  # over the owner's hourly cap: not sent


@dataclass(frozen=True, slots=True)
class AlertDelivery:
    id: str
    owner_id: str
    rule_id: str
    kind: str  # alert, digest, resolved or test
    channel: str  # email or webhook
    status: DeliveryStatus
    subject: str
    created_at_ms: int
    error: str | None = None
    task_id: str | None = None  # the webhook task
