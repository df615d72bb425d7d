"""Domain values of workflows: a run, its steps and their states. Frozen, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..models import Attempt, FlowControl, FlowRef, NewTask, ScheduleTiming


class RunState(StrEnum):
    PENDING = "PENDING"  # created; its first steps are not due yet
    RUNNING = "RUNNING"  # steps are being run
    SUCCESS = "SUCCESS"  # every step succeeded or was skipped
    ERROR = "ERROR"  # a step ended in error; nothing new starts until a retry
    CANCELLED = "CANCELLED"  # cancelled by its owner

    @property
    def is_final(self) -> bool:
        return self in (RunState.SUCCESS, RunState.ERROR, RunState.CANCELLED)


class StepState(StrEnum):
    WAITING = "WAITING"  # some dependency has not succeeded yet
    RUNNING = "RUNNING"  # its task exists and has not ended
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"  # its task ended in error, or its request could not be built
    SKIPPED = "SKIPPED"  # its condition was false, or a dependency was skipped
    CANCELLED = "CANCELLED"


@dataclass(frozen=True, slots=True)
class StepTemplate:
    """A step as declared: the wire ``httpRequest``/``config``/``metadata`` it renders into
    a task, with ``{{ … }}`` placeholders still in place."""

    id: str
    depends_on: tuple[str, ...]
    request: dict[str, Any]  # {"httpRequest": …, "config": …, "metadata": …}
    when: Any = None  # a condition (see template.holds), or None: always run
    output: Any = None  # a template rendered against the step's own response
    run_if_skipped: bool = False  # run although a dependency was skipped


@dataclass(frozen=True, slots=True)
class NewRun:
    name: str
    input: Any
    steps: tuple[StepTemplate, ...]
    due_at_ms: int  # when the root steps are due
    timeout_ms: int | None = None  # the run fails if it is not final by created + timeout
    metadata: tuple[tuple[str, str], ...] | None = None
    # the wire httpRequest (no body) called with the run's envelope when it ends
    on_success: dict[str, Any] | None = None
    on_failure: dict[str, Any] | None = None
    # the steps already rendered and checked as tasks when the run was created (those
    # that use nothing but the input), by step id, and the owner's validated domains
    # they were checked against: the store uses them rather than building them again
    built: Mapping[str, NewTask] = field(default_factory=dict)
    built_for: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class WorkflowDefinition:
    """A run as a schedule keeps it: everything of NewRun but the due time, which each
    slot gives (``at``). Validated once, when the schedule is created or changed."""

    name: str
    input: Any
    steps: tuple[StepTemplate, ...]
    timeout_ms: int | None = None
    metadata: tuple[tuple[str, str], ...] | None = None
    on_success: dict[str, Any] | None = None
    on_failure: dict[str, Any] | None = None

    def at(self, due_at_ms: int) -> NewRun:
        """The run a slot starts, its first steps due at ``due_at_ms``."""
        return NewRun(
            self.name,
            self.input,
            self.steps,
            due_at_ms,
            self.timeout_ms,
            self.metadata,
            self.on_success,
            self.on_failure,
        )


@dataclass(frozen=True, slots=True)
class NewWorkflowSchedule:
    """A schedule whose every slot starts a run of ``workflow``."""

    name: str
    timing: ScheduleTiming
    workflow: WorkflowDefinition


@dataclass(frozen=True, slots=True)
class WorkflowStep:
    id: str
    state: StepState
    depends_on: tuple[str, ...]
    task_id: str | None
    attempts: int
    status_code: int
    output: Any
    error: str | None
    started_at_ms: int | None
    finished_at_ms: int | None


@dataclass(frozen=True, slots=True)
class WorkflowRun:
    id: str
    owner_id: str
    name: str
    state: RunState
    created_at_ms: int
    due_at_ms: int
    finished_at_ms: int | None
    deadline_ms: int | None
    error: str | None
    metadata: tuple[tuple[str, str], ...] | None
    steps: tuple[WorkflowStep, ...] = ()
    schedule_id: str | None = None  # the schedule whose slot started the run


@dataclass(frozen=True, slots=True)
class StepStart:
    """A step task the store created while advancing a run: the scheduler arms it, with
    its priority and, when the step names one, its flow-control key (owner, key) and the
    limits the step gives that key (the last registration wins, as for a task)."""

    task_id: str
    due_at_ms: int
    priority: int = 0
    flow: FlowRef | None = None
    flow_limits: FlowControl | None = None
    # set when the store created the task already claimed (its first attempt durably
    # running, in the outcome's transaction): the scheduler starts it without a claim
    attempt: Attempt | None = None
    # released by its dependencies' outcomes (not a run's first step): its run is under
    # way, so it is never paced behind new runs (workflows/pacing.py)
    released: bool = False


@dataclass(frozen=True, slots=True)
class RunEnd:
    """A run a schedule started that ended in SUCCESS or ERROR, as alert rules see it:
    the task of the step that failed and its status (None and 0 after a success or a
    timeout)."""

    run_id: str
    owner_id: str
    schedule_id: str
    state: RunState
    error: str | None
    metadata: tuple[tuple[str, str], ...] | None
    task_id: str | None
    status_code: int
    finished_at_ms: int
