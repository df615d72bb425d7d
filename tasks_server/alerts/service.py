"""AlertService: watches recorded outcomes, keeps incidents, sends messages.

The scheduler hands it each batch of committed outcomes (``observe``, in memory, never
blocking); its loop judges them against the owner's rules (cached briefly), moves the
incidents on, and delivers the messages: e-mail over SMTP, or a webhook created as an
ordinary task (so it is retried, recorded, and leaves under the same egress and signing
rules as any task). Every delivery is recorded; one that fails is logged and counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..alerting import AlertDelivery, AlertRule, DeliveryStatus, Incident
from ..clock import Clock
from ..engine.callbacks import CALLBACK_CONFIG
from ..models import Attempt, NewTask, Result, TaskSpec, TaskState
from ..store import Store
from ..store.ids import new_task_id
from ..workflows.model import RunEnd, RunState
from .incidents import Step, step
from .messages import Message, compose
from .rules import Observation, Verdict, judge, subject_of, threshold

logger = logging.getLogger(__name__)

_QUEUE_BOUND = 10_000
_RULES_TTL_S = 10.0
HOUR_MS = 3_600_000
ALERT_KEY = "alert"  # the metadata key that marks an alert's webhook task


class Mailer(Protocol):
    async def send(self, to: tuple[str, ...], subject: str, text: str) -> None: ...


class TaskNotifier(Protocol):
    def notify(self, task_id: str, due_at_ms: int) -> None: ...


@dataclass(frozen=True, slots=True)
class AlertOptions:
    public_url: str
    max_per_hour: int = 30  # per owner; more are recorded as suppressed
    digest_interval_ms: int = HOUR_MS


@dataclass(slots=True)
class AlertStats:
    """Counters read by the metrics endpoint: deliveries by status, observations dropped."""

    deliveries: dict[str, int] = dataclasses.field(default_factory=dict)
    dropped: int = 0

    def count(self, status: DeliveryStatus) -> None:
        self.deliveries[status.value] = self.deliveries.get(status.value, 0) + 1


def observation(attempt: Attempt, result: Result) -> Observation:
    outcome = result.outcome
    return Observation(
        owner_id=attempt.owner_id,
        task_id=attempt.task_id,
        schedule_id=attempt.schedule_id,
        metadata=attempt.spec.metadata,
        attempt=attempt.number,
        state=result.state,
        status_code=result.status_code,
        error=outcome.error,
        body=outcome.body,
        at_ms=result.finished_at_ms,
    )


def run_observation(end: RunEnd) -> Observation:
    """A scheduled run's end as a final outcome of its schedule: SUCCESS or ERROR, with
    the failed step's task and status (the run itself after a timeout)."""
    return Observation(
        owner_id=end.owner_id,
        task_id=end.task_id or end.run_id,
        schedule_id=end.schedule_id,
        metadata=end.metadata,
        attempt=1,
        state=TaskState.SUCCESS if end.state is RunState.SUCCESS else TaskState.ERROR,
        status_code=end.status_code,
        error=end.error,
        body=b"",
        at_ms=end.finished_at_ms,
        run_id=end.run_id,
    )


def _is_alert_webhook(attempt: Attempt) -> bool:
    """An alert's own webhook call is not judged by alert rules: a failing webhook would
    otherwise raise alerts about itself."""
    return any(key == ALERT_KEY for key, _ in attempt.spec.metadata or ())


class AlertService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        tasks: TaskNotifier,
        options: AlertOptions,
        mailer: Mailer | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._tasks = tasks
        self._options = options
        self._mailer = mailer
        self._queue: asyncio.Queue[Observation | None] = asyncio.Queue(_QUEUE_BOUND)
        self._rules: dict[str, tuple[float, list[AlertRule]]] = {}
        self._owners_with_rules: set[str] | None = None
        self.stats = AlertStats()
        self.busy = False  # tests wait for the queue to drain and this to clear

    # -- called by the scheduler and the API (in memory) -------------------------------

    def observe(self, pairs: Sequence[tuple[Attempt, Result]]) -> None:
        """Committed outcomes; dropped (and counted) only if the queue is full."""
        for attempt, result in pairs:
            owner_id = attempt.owner_id
            if not owner_id or self._has_no_rules(owner_id) or _is_alert_webhook(attempt):
                continue
            self._put(observation(attempt, result))

    def _has_no_rules(self, owner_id: str) -> bool:
        """Whether the owner had no rule when last read (within the cache's lifetime), so
        that its outcomes are not queued to be judged by none: a burst's thousands of
        outcomes cost a lookup each, not an observation and a pass of the loop."""
        cached = self._rules.get(owner_id)
        if cached is None or cached[1]:
            return False
        return self._clock.monotonic() - cached[0] < _RULES_TTL_S

    def observe_run(self, end: RunEnd) -> None:
        """A committed end of a workflow run a schedule started: its schedule's rules
        judge it as they judge a scheduled task's final outcome."""
        self._put(run_observation(end))

    def _put(self, seen: Observation) -> None:
        try:
            self._queue.put_nowait(seen)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            logger.error("alerts: queue full, an outcome of task %s was not judged", seen.task_id)

    @property
    def public_url(self) -> str:
        return self._options.public_url

    def rules_changed(self, owner_id: str) -> None:
        self._rules.pop(owner_id, None)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    # -- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            self.busy = True
            try:
                await self._handle(item)
            except Exception:
                logger.exception("alerts: judging an outcome of task %s failed", item.task_id)
            finally:
                self.busy = self._queue.qsize() > 0

    async def stop(self) -> None:
        await self._queue.put(None)

    async def _rules_for(self, owner_id: str) -> list[AlertRule]:
        now = self._clock.monotonic()
        cached = self._rules.get(owner_id)
        if cached is not None and now - cached[0] < _RULES_TTL_S:
            return cached[1]
        rules = await self._store.list_alert_rules(owner_id)
        self._rules[owner_id] = (now, rules)
        return rules

    async def _handle(self, seen: Observation) -> None:
        for rule in await self._rules_for(seen.owner_id):
            verdict = judge(rule, seen)
            if verdict is not None:
                await self._advance(rule, seen, verdict)

    async def _advance(self, rule: AlertRule, seen: Observation, verdict: Verdict) -> None:
        subject = subject_of(rule, seen)
        now = self._clock.now_ms()
        moved: Step | None = None

        def change(current: Incident | None) -> Incident | None:
            """Under the incident's lock (several nodes judge outcomes of the same rule):
            the step from what is saved now, so an incident opens once."""
            nonlocal moved
            incident = current or Incident(rule.id, subject)
            if verdict is Verdict.FAILED:
                incident = dataclasses.replace(
                    incident,
                    last_task_id=seen.task_id,
                    last_status=seen.status_code,
                    last_error=seen.error,
                    last_at_ms=seen.at_ms,
                )
            moved = step(incident, verdict, threshold(rule), now, self._options.digest_interval_ms)
            if moved.incident != incident or verdict is Verdict.FAILED:
                return moved.incident
            return None

        await self._store.change_incident(rule.id, subject, change)
        if moved is not None and moved.message is not None:
            message = compose(
                rule, moved.incident, moved.message, moved.repeats, self._options.public_url, now
            )
            await self.deliver(rule, message)

    # -- delivery -----------------------------------------------------------------------

    async def deliver(self, rule: AlertRule, message: Message) -> AlertDelivery:
        """Send ``message`` through the rule's channel (unless the owner's hourly cap is
        reached) and record the delivery."""
        now = self._clock.now_ms()
        channel = "email" if rule.email_to else "webhook"
        status, error, task_id = DeliveryStatus.SUPPRESSED, None, None
        sent = await self._store.count_alert_deliveries(rule.owner_id, now - HOUR_MS)
        if sent >= self._options.max_per_hour:
            error = f"over the cap of {self._options.max_per_hour} alerts per hour"
            logger.warning("alerts: rule %s: %s; %s not sent", rule.id, error, message.kind.value)
        elif rule.email_to:
            status, error = await self._send_mail(rule, message)
        else:
            status, error, task_id = await self._queue_webhook(rule, message)
        delivery = AlertDelivery(
            id=new_task_id(now),
            owner_id=rule.owner_id,
            rule_id=rule.id,
            kind=message.kind.value,
            channel=channel,
            status=status,
            subject=message.subject,
            created_at_ms=now,
            error=error,
            task_id=task_id,
        )
        await self._store.add_alert_delivery(delivery)
        self.stats.count(status)
        return delivery

    async def _send_mail(
        self, rule: AlertRule, message: Message
    ) -> tuple[DeliveryStatus, str | None]:
        assert rule.email_to
        if self._mailer is None:
            logger.error("alerts: rule %s wants e-mail but SMTP_HOST is not set", rule.id)
            return DeliveryStatus.FAILED, "SMTP_HOST is not set"
        try:
            await self._mailer.send(rule.email_to, message.subject, message.text)
        except Exception as exc:  # the SMTP server's refusal, a timeout, a TLS failure
            logger.error("alerts: rule %s: mail not sent: %r", rule.id, exc)
            return DeliveryStatus.FAILED, repr(exc)[:500]
        return DeliveryStatus.SENT, None

    async def _queue_webhook(
        self, rule: AlertRule, message: Message
    ) -> tuple[DeliveryStatus, str | None, str | None]:
        assert rule.webhook is not None
        now = self._clock.now_ms()
        body = json.dumps(message.payload, separators=(",", ":"))
        request = dataclasses.replace(rule.webhook, data_json=body, data_text=None, form=None)
        spec = TaskSpec(request, CALLBACK_CONFIG, ((ALERT_KEY, rule.id),))
        try:
            task = await self._store.create_task(rule.owner_id, NewTask(spec, now), now)
        except Exception as exc:  # e.g. the owner's task limit
            logger.error("alerts: rule %s: webhook task not created: %r", rule.id, exc)
            return DeliveryStatus.FAILED, repr(exc)[:500], None
        self._tasks.notify(task.id, now)
        return DeliveryStatus.QUEUED, None, task.id


Observer = Callable[[Sequence[tuple[Attempt, Result]]], None]
