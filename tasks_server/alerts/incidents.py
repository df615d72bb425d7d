"""Incidents: one per rule and subject, so a failing job sends one alert, not a storm.

Pure: ``step`` takes the incident as stored, a verdict and the time, and returns the
incident to store and the message to send, if any. An incident opens (``alert``) after
the rule's number of failures in a row; while it is open, repeats are counted and sent
together (``digest``) at most once per digest interval; the first healthy observation
closes it (``resolved``, with the repeats not yet reported).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

from ..alerting import Incident
from .rules import Verdict


class MessageKind(StrEnum):
    ALERT = "alert"
    DIGEST = "digest"
    RESOLVED = "resolved"
    TEST = "test"


@dataclass(frozen=True, slots=True)
class Step:
    incident: Incident
    message: MessageKind | None
    repeats: int = 0  # failures the message reports that no earlier message did


def step(
    incident: Incident,
    verdict: Verdict,
    threshold: int,
    now_ms: int,
    digest_interval_ms: int,
) -> Step:
    if verdict is Verdict.HEALTHY:
        if not incident.is_open:
            return Step(dataclasses.replace(incident, streak=0), None)
        closed = dataclasses.replace(
            incident, is_open=False, streak=0, unreported=0, last_sent_at_ms=now_ms
        )
        return Step(closed, MessageKind.RESOLVED, incident.unreported)
    streak = incident.streak + 1
    if not incident.is_open:
        if streak < threshold:
            return Step(dataclasses.replace(incident, streak=streak), None)
        opened = dataclasses.replace(
            incident,
            is_open=True,
            streak=streak,
            opened_at_ms=now_ms,
            failures=1,
            unreported=0,
            last_sent_at_ms=now_ms,
        )
        return Step(opened, MessageKind.ALERT)
    repeated = dataclasses.replace(
        incident,
        streak=streak,
        failures=incident.failures + 1,
        unreported=incident.unreported + 1,
    )
    last = incident.last_sent_at_ms or 0
    if now_ms - last < digest_interval_ms:
        return Step(repeated, None)
    reported = dataclasses.replace(repeated, unreported=0, last_sent_at_ms=now_ms)
    return Step(reported, MessageKind.DIGEST, repeated.unreported)
