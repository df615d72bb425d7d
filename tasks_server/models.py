"""Domain values: owners, tasks, the HTTP request a task makes and its outcome.

Frozen, typed, free of I/O. Times are integer epoch ms (UTC); wire names live in ``api/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, NamedTuple


class TaskState(StrEnum):
    """A task's state; the values are the original API's wire strings."""

    RUNNING = "RUNNING"  # accepted and pending: waiting, in flight or between retries
    PAUSED = "PAUSED"  # held by its owner; nothing is armed
    SUCCESS = "SUCCESS"  # an attempt ended with a non-failure status
    ERROR = "ERROR"  # the last attempt failed and no retry is left (or status ignored)
    REVOKED = "REVOKED"  # cancelled by its owner

    @property
    def is_terminal(self) -> bool:
        return self in (TaskState.SUCCESS, TaskState.ERROR, TaskState.REVOKED)


@dataclass(frozen=True, slots=True)
class Owner:
    id: str
    name: str
    created_at_ms: int
    tasks_in_queue: int
    tasks_in_queue_limit: int
    disabled: bool = False  # set by an administrator: the owner's key stops working
    request_budget: int | None = None  # API requests per minute; None: the server's default


@dataclass(frozen=True, slots=True)
class OwnerSecurity:
    """An owner's signing secrets and validated domains.

    ``previous_secret`` still signs until ``previous_until_ms`` (a rotation's overlap);
    ``allowed_hosts`` are host patterns (``example.com``, ``*.example.com``) the owner's
    calls may reach, None when the administrator set no list.
    """

    signing_secret: bytes
    previous_secret: bytes | None = None
    previous_until_ms: int | None = None
    signing_enabled: bool = True
    allowed_hosts: tuple[str, ...] | None = None

    def signing_secrets(self, now_ms: int) -> tuple[bytes, ...]:
        """The secrets that sign a call made at ``now_ms`` (none when signing is off)."""
        if not self.signing_enabled:
            return ()
        overlap = self.previous_until_ms is not None and now_ms < self.previous_until_ms
        if self.previous_secret is not None and overlap:
            return (self.signing_secret, self.previous_secret)
        return (self.signing_secret,)


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class AwsSigv4:
    provider1: str
    provider2: str
    region: str
    service: str
    key: str
    secret: str


@dataclass(frozen=True, slots=True)
class FormField:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Cookie:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Pem:
    """A certificate, key or CA bundle: inline content or a file inside the allowed dir."""

    # read by pydantic when the store serialises a spec: binary content travels as base64
    __pydantic_config__: ClassVar[dict[str, str]] = {
        "ser_json_bytes": "base64",
        "val_json_bytes": "base64",
    }

    content: bytes | None = None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class ClientCert:
    value: Pem
    password: str | None = None


@dataclass(frozen=True, slots=True)
class ResolveEntry:
    host: str
    port: int
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Proxy:
    protocol: str  # "http" or "https"
    host: str
    port: int | None = None


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """The call a task makes. Bodies: ``data_text``, ``data_json`` (JSON text) or ``form``."""

    url: str
    method: str
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    data_text: str | None = None
    data_json: str | None = None
    form: tuple[FormField, ...] | None = None
    cookie_file: str | None = None  # Netscape cookie-file text
    cookies: tuple[Cookie, ...] | None = None
    auth_basic: Credentials | None = None
    auth_digest: Credentials | None = None
    auth_ntlm: Credentials | None = None
    auth_aws_sigv4: AwsSigv4 | None = None
    transport: str | None = None  # "curl" or None; kept for the wire format only


class Jitter(StrEnum):
    """How a retry policy spreads its delays (AWS's names for the same three curves)."""

    NONE = "none"  # exactly the computed delay
    FULL = "full"  # uniform in [0, delay]
    EQUAL = "equal"  # delay / 2 + uniform in [0, delay / 2]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Cloud Tasks' retry shape; defaults are Cloud Tasks' queue defaults.

    The wait before retry n starts at ``min_backoff_ms``, doubles ``max_doublings`` times,
    then grows linearly by its last doubled value, capped at ``max_backoff_ms``. Retrying
    stops once ``max_attempts`` attempts were made (-1: no bound) and
    ``max_retry_duration_ms`` has passed since the first attempt (0: no bound); an
    unbounded limit counts as reached unless both are unbounded.
    """

    max_attempts: int = 100
    max_retry_duration_ms: int = 0
    min_backoff_ms: int = 100
    max_backoff_ms: int = 3_600_000
    max_doublings: int = 16
    jitter: Jitter = Jitter.NONE


class FlowPeriod(StrEnum):
    SECOND = "1s"
    MINUTE = "1m"
    HOUR = "1h"

    @property
    def ms(self) -> int:
        return {"1s": 1_000, "1m": 60_000, "1h": 3_600_000}[self.value]


@dataclass(frozen=True, slots=True)
class FlowControl:
    """A flow-control key of its owner: at most ``rate`` starts per ``period`` (a token
    bucket whose burst is the rate) and ``parallelism`` calls in flight. None: no limit."""

    key: str
    rate: int | None = None
    period: FlowPeriod = FlowPeriod.SECOND
    parallelism: int | None = None


@dataclass(frozen=True, slots=True)
class FlowSetting:
    """A flow-control key as stored: its limits and whether its owner paused it."""

    flow: FlowControl
    paused: bool = False


@dataclass(frozen=True, slots=True)
class FlowStatus:
    """A key with what waits behind it: claimable tasks and the oldest due time."""

    setting: FlowSetting
    waiting: int = 0
    oldest_due_ms: int | None = None


DEFAULT_USER_AGENT = "Tasks-Server/1.0 (compatible; Linux x86_64; +http://tasks-server)"


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """Scheduling, retry and transfer options; defaults are the original's
    (docs/compatibility.md#config-fields)."""

    execution_delay_ms: int = 1
    execute_at_ms: int | None = None
    execute_immediately: bool = False
    retry: int = 0
    retry_at_ms: int | None = None
    retry_interval_ms: int = 1
    retry_exponential: bool = False
    ignore_status_code: tuple[int, ...] = ()
    timeout_ms: int = 30_000
    timeout_at_ms: int | None = None
    http_version: str = "1.1"
    user_agent: str = DEFAULT_USER_AGENT
    ip_version: int = 4
    credentials: str | None = None
    referer_url: str | None = None  # a URL or "AUTO"
    referrer_policy: str | None = None
    mode: str | None = None
    keep_alive_duration_s: int = 30
    hsts: str | bool | None = None  # HSTS cache-file text, or a switch
    session_id: bool = True
    insecure: bool = False
    trace_response_data: bool = True
    ca: Pem | None = None
    cert: ClientCert | None = None
    cert_type: str | None = None
    cert_status: bool | None = None
    key: Pem | None = None
    key_type: str | None = None
    location: bool = True
    location_trusted: Credentials | None = None
    redirect_attempts: int = 8
    proto: str | None = None
    proto_redirect: str | None = None
    dns_server: tuple[str, ...] | None = None
    resolve: tuple[ResolveEntry, ...] | None = None
    doh_url: str | None = None
    doh_insecure: bool | None = None
    tls_version: str | None = None
    tls_max_version: str | None = None
    proxy: Proxy | None = None
    proxy_headers: tuple[tuple[str, str], ...] | None = None
    proxy_insecure: bool | None = None
    proxy_http_version: str = "1.1"
    proxy_auth_ntlm: Credentials | None = None
    proxy_auth_basic: Credentials | None = None
    proxy_auth_digest: Credentials | None = None
    ha_proxy_client_ip: str | None = None
    ha_proxy_protocol: bool | None = None
    # delivery semantics beside the original's options
    retry_policy: RetryPolicy | None = None  # replaces retry/retryInterval/... when set
    retry_on: tuple[int, ...] = ()  # statuses retried besides the default ones
    no_retry_on: tuple[int, ...] = ()  # statuses never retried
    priority: int = 0  # -100..100; higher starts first among tasks due together
    deduplication_id: str | None = None
    flow_control: FlowControl | None = None

    @property
    def retry_limit(self) -> int:
        """Retries allowed by count (-1: no bound by count)."""
        if self.retry_policy is not None:
            attempts = self.retry_policy.max_attempts
            return -1 if attempts < 0 else max(attempts - 1, 0)
        return 1 if self.retry_at_ms is not None else self.retry


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Everything a client registered: the request, its options and its metadata."""

    request: HttpRequest
    config: TaskConfig
    metadata: tuple[tuple[str, str], ...] | None = None
    on_success: HttpRequest | None = None  # called with the outcome after a final SUCCESS
    on_failure: HttpRequest | None = None  # called with the outcome after a final ERROR


@dataclass(frozen=True, slots=True)
class NewTask:
    spec: TaskSpec
    due_at_ms: int  # the planned first attempt (estimateExecutionAt)
    # a registration with the spec's deduplication id returns the existing task until then
    dedup_until_ms: int | None = None

    def registered(self, task_id: str, owner_id: str, now_ms: int) -> Task:
        """The task as its owner sees it the moment this registration is stored."""
        due = self.due_at_ms
        # by position (a batch makes one per item, and each keyword argument costs a
        # lookup): id, owner_id, state, created_at_ms, status_code, estimate_end_at_ms,
        # estimate_execution_at_ms, response, metadata, attempts, retry_count, due_at_ms
        running = TaskState.RUNNING
        return Task(
            task_id, owner_id, running, now_ms, 0, 0, due, None, self.spec.metadata, 0, 0, due
        )


@dataclass(frozen=True, slots=True)
class Task:
    """A stored task as its owner sees it."""

    id: str
    owner_id: str
    state: TaskState
    created_at_ms: int
    status_code: int
    estimate_end_at_ms: int
    estimate_execution_at_ms: int
    response: bytes | None
    metadata: tuple[tuple[str, str], ...] | None
    attempts: int = 0
    retry_count: int = 0
    due_at_ms: int | None = None
    response_truncated: bool = False  # the response was cut at MAX_SIZE_DATA_RESPONSE
    schedule_id: str | None = None  # read only where a listing shows it
    cycle: int = 1  # 1, then one more per replay from the dead-letter queue
    # True when this answer is an existing task found by its deduplication id
    deduplicated: bool = False


@dataclass(frozen=True, slots=True)
class Attempt:
    """One claimed attempt: the durable record that a call is about to leave."""

    task_id: str
    number: int  # 1-based
    spec: TaskSpec
    retry_count: int  # retries made before this attempt (0 on the first)
    due_at_ms: int  # when this attempt was planned
    started_at_ms: int
    owner_id: str = ""
    schedule_id: str | None = None  # the schedule that created the task, if any
    first_started_at_ms: int | None = None  # the task's first attempt (retry durations)


FlowRef = tuple[str, str]  # (owner id, flow-control key): keys are per owner


class DueTask(NamedTuple):
    """A claimable task as the engine's due-time index sees it."""

    task_id: str
    due_at_ms: int
    priority: int = 0
    flow: FlowRef | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a call produced. ``status`` is 0 when no HTTP response arrived."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    error: str | None = None  # curl's error text when the transfer failed
    curl_code: int = 0
    timed_out: bool = False
    truncated: bool = False  # the body went past the cap: kept up to it, the rest not read
    total_ms: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    denied: bool = False  # refused by the egress policy: no retry, the target was not tried


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """A finished attempt as stored in the history."""

    number: int
    started_at_ms: int
    finished_at_ms: int | None
    status_code: int
    error: str | None
    response: bytes | None
    headers: tuple[tuple[str, str], ...]
    total_ms: float
    truncated: bool = False
    cycle: int = 1


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A task created in the transaction that records a result (a callback)."""

    task_id: str
    spec: TaskSpec
    due_at_ms: int


@dataclass(frozen=True, slots=True)
class Result:
    """A decided attempt, ready to be written: the new state and what to show."""

    task_id: str
    attempt_number: int
    finished_at_ms: int
    state: TaskState
    status_code: int
    response: bytes | None  # what the task shows as its latest response
    outcome: Outcome
    next_due_at_ms: int | None = None  # set when a retry is planned
    follow_up: FollowUp | None = None  # created with the outcome, if the task is updated


@dataclass(frozen=True, slots=True)
class Call:
    """One outgoing HTTP call as the dispatcher sees it; it knows nothing of tasks."""

    request: HttpRequest
    config: TaskConfig
    headers: tuple[tuple[str, str], ...]  # added by the server (X-Tasks-*), sent last
    timeout_ms: int
    max_body_bytes: int
    owner_id: str = ""  # whose call it is: connections are never shared between owners
    # the owner's validated domains (host patterns); None when the owner has no list
    allowed_hosts: tuple[str, ...] | None = None
    # Standard Webhooks signing: (message id, epoch seconds, secrets); None: unsigned
    signing: tuple[str, int, tuple[bytes, ...]] | None = None


# -- recurring schedules ----------------------------------------------------------------


class ScheduleState(StrEnum):
    """A schedule's state; the values are the wire strings."""

    ACTIVE = "ACTIVE"  # creates a task at each slot
    PAUSED = "PAUSED"  # held by its owner; slots that pass meanwhile are not made up
    FINISHED = "FINISHED"  # past its end time or its maximum number of runs; fires no more


class ScheduleTarget(StrEnum):
    """What a schedule's slot starts."""

    TASK = "task"  # a task made from the schedule's template
    WORKFLOW = "workflow"  # a workflow run made from the schedule's definition


class MisfirePolicy(StrEnum):
    """What to do with slots that passed while nothing could fire them (downtime)."""

    SKIP = "skip"  # drop them; wait for the next slot
    RUN_ONCE = "run_once"  # one catch-up run for all of them, then continue
    RUN_ALL = "run_all"  # one run per missed slot, at most catch_up_limit (the latest)


class OverlapPolicy(StrEnum):
    """What a slot does while the schedule's previous task is still RUNNING or PAUSED."""

    ALLOW = "allow"  # fire anyway
    SKIP = "skip"  # drop the slot
    QUEUE = "queue"  # fire once the previous task has ended


@dataclass(frozen=True, slots=True)
class ScheduleTiming:
    """When a schedule fires. Bounds are epoch ms; ``max_runs`` counts created tasks."""

    expression: str  # cron (5 or 6 fields), a macro, or "@every <duration>"
    timezone: str = "UTC"
    start_at_ms: int | None = None
    end_at_ms: int | None = None
    max_runs: int | None = None
    misfire: MisfirePolicy = MisfirePolicy.RUN_ONCE
    overlap: OverlapPolicy = OverlapPolicy.ALLOW
    catch_up_limit: int = 10


@dataclass(frozen=True, slots=True)
class NewSchedule:
    name: str
    timing: ScheduleTiming
    task: TaskSpec  # the template each run's task is made from


@dataclass(frozen=True, slots=True)
class Schedule:
    """A stored schedule and its progress (its task template is read separately).

    ``cursor_ms``: every slot at or before it is decided (fired, skipped or dropped); it
    is the durable "last fired slot" the runner plans from. ``next_at_ms`` is when the
    runner looks at the schedule again (None unless ACTIVE). ``version`` grows with every
    write, so a plan made from an older read is refused.
    """

    id: str
    owner_id: str
    name: str
    timing: ScheduleTiming
    state: ScheduleState
    created_at_ms: int
    updated_at_ms: int
    cursor_ms: int
    runs: int = 0
    last_run_at_ms: int | None = None  # the slot of the last task created
    last_task_id: str | None = None
    next_at_ms: int | None = None
    version: int = 0
    last_task_state: TaskState | None = None  # read with the schedule; None when gone
    last_task_ended_at_ms: int | None = None
    # a workflow schedule's last_task_* describe its last run (PENDING reads as RUNNING,
    # CANCELLED as REVOKED), so the overlap policies treat runs as tasks
    target: ScheduleTarget = ScheduleTarget.TASK

    @property
    def last_task_pending(self) -> bool:
        return self.last_task_state in (TaskState.RUNNING, TaskState.PAUSED)


@dataclass(frozen=True, slots=True)
class ScheduleFire:
    """One planned step of a schedule, written in one transaction by the store: a task
    per entry of ``due_at_ms`` (each a slot), then the schedule's new progress."""

    schedule_id: str
    version: int  # the version the plan was made from
    due_at_ms: tuple[int, ...]
    cursor_ms: int
    next_at_ms: int | None
    state: ScheduleState


@dataclass(frozen=True, slots=True)
class HostLimit:
    """An administrator's limits for one destination: ``host`` is ``name:port`` or a bare
    name (every port). None keeps the server-wide default (HOST_MAX_CONCURRENCY,
    HOST_MAX_RATE); a rate is in calls started per second."""

    host: str
    max_concurrency: int | None = None
    max_rate: float | None = None
    updated_at_ms: int = 0
