"""schedules.policy: the misfire and overlap decisions as tables, with explicit times."""

from __future__ import annotations

import dataclasses

import pytest

from tasks_server.models import (
    MisfirePolicy,
    OverlapPolicy,
    Schedule,
    ScheduleFire,
    ScheduleState,
    ScheduleTiming,
    TaskState,
)
from tasks_server.schedules.policy import (
    LOOKAHEAD_MS,
    MISFIRE_GRACE_MS,
    Progress,
    plan,
    preview,
    resumed,
    revised,
    start,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
S = 1_000
M = 60_000


def schedule(
    expression: str = "* * * * *",
    *,
    cursor: int = T0,
    runs: int = 0,
    state: ScheduleState = ScheduleState.ACTIVE,
    last: TaskState | None = None,
    last_ended: int | None = None,
    **timing: object,
) -> Schedule:
    return Schedule(
        id="S",
        owner_id="O",
        name="every-minute",
        timing=ScheduleTiming(expression, **timing),  # type: ignore[arg-type]
        state=state,
        created_at_ms=T0,
        updated_at_ms=T0,
        cursor_ms=cursor,
        runs=runs,
        next_at_ms=None,
        version=7,
        last_task_state=last,
        last_task_ended_at_ms=last_ended,
    )


def minutes(*values: int) -> tuple[int, ...]:
    return tuple(T0 + v * M for v in values)


RUN_ONCE, SKIP, RUN_ALL = MisfirePolicy.RUN_ONCE, MisfirePolicy.SKIP, MisfirePolicy.RUN_ALL


@pytest.mark.parametrize(
    ("now", "misfire", "limit", "fired", "cursor", "next_at"),
    [
        # nothing due yet (woken early): only the next look is written
        (T0 + M - LOOKAHEAD_MS - 1, RUN_ONCE, 10, (), T0, T0 + M),
        # on time, and late within the grace: the slot fires
        (T0 + M + 5, RUN_ONCE, 10, minutes(1), T0 + M, T0 + 2 * M),
        (T0 + M + MISFIRE_GRACE_MS, SKIP, 10, minutes(1), T0 + M, T0 + 2 * M),
        # one slot, just too late: missed
        (T0 + M + MISFIRE_GRACE_MS + 1, SKIP, 10, (), T0 + M, T0 + 2 * M),
        (T0 + M + MISFIRE_GRACE_MS + 1, RUN_ONCE, 10, minutes(1), T0 + M, T0 + 2 * M),
        # ten slots missed during a downtime, the last one 30 s ago
        (T0 + 10 * M + 30 * S, SKIP, 10, (), T0 + 10 * M, T0 + 11 * M),
        (T0 + 10 * M + 30 * S, RUN_ONCE, 10, minutes(10), T0 + 10 * M, T0 + 11 * M),
        (T0 + 10 * M + 30 * S, RUN_ALL, 3, minutes(8, 9, 10), T0 + 10 * M, T0 + 11 * M),
        (
            T0 + 10 * M + 30 * S,
            RUN_ALL,
            100,
            minutes(1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
            T0 + 10 * M,
            T0 + 11 * M,
        ),
        # back up just in time for slot 10: it is on time, 1-9 are missed
        (T0 + 10 * M + S, SKIP, 10, minutes(10), T0 + 10 * M, T0 + 11 * M),
        (T0 + 10 * M + S, RUN_ONCE, 10, minutes(9, 10), T0 + 10 * M, T0 + 11 * M),
        (T0 + 10 * M + S, RUN_ALL, 3, minutes(7, 8, 9, 10), T0 + 10 * M, T0 + 11 * M),
        # a year down: only the latest slots are even looked at
        (
            T0 + 525_600 * M + 30 * S,
            RUN_ALL,
            2,
            minutes(525_599, 525_600),
            T0 + 525_600 * M,
            None,
        ),
    ],
)
def test_misfire_policy(
    now: int,
    misfire: MisfirePolicy,
    limit: int,
    fired: tuple[int, ...],
    cursor: int,
    next_at: int | None,
) -> None:
    step = plan(schedule(misfire=misfire, catch_up_limit=limit), now)
    expected_next = next_at if next_at is not None else cursor + M
    assert step == ScheduleFire("S", 7, fired, cursor, expected_next, ScheduleState.ACTIVE)


@pytest.mark.parametrize(
    ("overlap", "last", "ended", "misfire", "now", "fired", "cursor"),
    [
        # allow: the previous task does not matter
        (OverlapPolicy.ALLOW, TaskState.RUNNING, None, RUN_ONCE, T0 + M, minutes(1), T0 + M),
        # skip: the slot is dropped while the previous task is RUNNING or PAUSED
        (OverlapPolicy.SKIP, TaskState.RUNNING, None, RUN_ONCE, T0 + M, (), T0 + M),
        (OverlapPolicy.SKIP, TaskState.PAUSED, None, RUN_ONCE, T0 + M, (), T0 + M),
        (OverlapPolicy.SKIP, TaskState.SUCCESS, T0, RUN_ONCE, T0 + M, minutes(1), T0 + M),
        (OverlapPolicy.SKIP, TaskState.ERROR, T0, RUN_ONCE, T0 + M, minutes(1), T0 + M),
        # skip never starts two runs at once: of a catch-up, only the latest
        (OverlapPolicy.SKIP, None, None, RUN_ALL, T0 + 5 * M + 30 * S, minutes(5), T0 + 5 * M),
        # queue: nothing while pending, the cursor stays
        (OverlapPolicy.QUEUE, TaskState.RUNNING, None, RUN_ONCE, T0 + 3 * M, (), T0),
        # queue: slots that waited for a run that just ended are queued, not missed;
        # the earliest fires and the cursor stops there
        (
            OverlapPolicy.QUEUE,
            TaskState.SUCCESS,
            T0 + 3 * M,
            SKIP,
            T0 + 3 * M + S,
            minutes(1),
            T0 + M,
        ),
        # queue after a long-finished run and a downtime: the misfire policy decides
        (
            OverlapPolicy.QUEUE,
            TaskState.SUCCESS,
            T0,
            RUN_ONCE,
            T0 + 3 * M + 30 * S,
            minutes(3),
            T0 + 3 * M,
        ),
        (OverlapPolicy.QUEUE, TaskState.SUCCESS, T0, SKIP, T0 + 3 * M + 30 * S, (), T0 + 3 * M),
        (
            OverlapPolicy.QUEUE,
            TaskState.SUCCESS,
            T0,
            RUN_ALL,
            T0 + 3 * M + 30 * S,
            minutes(1),
            T0 + M,
        ),
    ],
)
def test_overlap_policy(
    overlap: OverlapPolicy,
    last: TaskState | None,
    ended: int | None,
    misfire: MisfirePolicy,
    now: int,
    fired: tuple[int, ...],
    cursor: int,
) -> None:
    subject = schedule(overlap=overlap, misfire=misfire, last=last, last_ended=ended)
    step = plan(subject, now)
    assert (step.due_at_ms, step.cursor_ms) == (fired, cursor)
    assert step.state is ScheduleState.ACTIVE
    assert step.next_at_ms == cursor + M  # queued slots are looked at again at once


@pytest.mark.parametrize(
    ("timing", "runs", "now", "fired", "state"),
    [
        ({"max_runs": 5}, 4, T0 + M, minutes(1), ScheduleState.FINISHED),
        ({"max_runs": 5}, 3, T0 + M, minutes(1), ScheduleState.ACTIVE),
        ({"max_runs": 5, "misfire": RUN_ALL}, 3, T0 + 9 * M, minutes(1, 2), ScheduleState.FINISHED),
        ({"end_at_ms": T0 + 3 * M}, 0, T0 + 2 * M, minutes(1, 2), ScheduleState.ACTIVE),
        # a slot at the end time itself still fires
        ({"end_at_ms": T0 + 2 * M}, 0, T0 + 2 * M, minutes(1, 2), ScheduleState.FINISHED),
        (
            {"end_at_ms": T0 + 3 * M, "misfire": RUN_ALL},
            0,
            T0 + 9 * M,
            minutes(1, 2, 3),
            ScheduleState.FINISHED,
        ),
        ({"end_at_ms": T0 + 30 * S}, 0, T0 + M, (), ScheduleState.FINISHED),
    ],
)
def test_bounds_finish_the_schedule(
    timing: dict[str, object],
    runs: int,
    now: int,
    fired: tuple[int, ...],
    state: ScheduleState,
) -> None:
    step = plan(schedule(runs=runs, **timing), now)
    assert (step.due_at_ms, step.state) == (fired, state)
    assert (step.next_at_ms is None) == (state is ScheduleState.FINISHED)


def replay(subject: Schedule, step: ScheduleFire, last: TaskState | None = None) -> Schedule:
    """What the store writes for a step (as fire_schedule does)."""
    return dataclasses.replace(
        subject,
        cursor_ms=step.cursor_ms,
        runs=subject.runs + len(step.due_at_ms),
        next_at_ms=step.next_at_ms,
        state=step.state,
        version=subject.version + 1,
        last_task_state=last if step.due_at_ms else subject.last_task_state,
    )


@pytest.mark.parametrize(
    ("misfire", "expected_in_gap"),
    # back at 30.6 s: 29-31 are on time (31 planned a lookahead early), 12-28 were missed
    [
        (SKIP, [29, 30, 31]),
        (RUN_ONCE, [28, 29, 30, 31]),
        (RUN_ALL, [23, 24, 25, 26, 27, 28, 29, 30, 31]),
    ],
)
def test_a_downtime_neither_repeats_nor_loses_a_slot(
    misfire: MisfirePolicy, expected_in_gap: list[int]
) -> None:
    """Every-second slots; the runner is down from 10.5 s to 30.5 s. Passes happen every
    200 ms otherwise, planning up to LOOKAHEAD_MS ahead. Each slot fires at most once;
    the gap follows the policy."""
    assert LOOKAHEAD_MS == 1_000
    subject = schedule("* * * * * *", misfire=misfire, catch_up_limit=6)
    fired: list[int] = []
    for now in range(T0, T0 + 40 * S, 200):
        if T0 + 10_500 < now < T0 + 30_500:
            continue
        step = plan(subject, now)
        fired += step.due_at_ms
        subject = replay(subject, step)
        assert plan(subject, now).due_at_ms == ()  # planning again at once: nothing
    seconds = [(slot - T0) // S for slot in fired]
    assert seconds == [*range(1, 12), *expected_in_gap, *range(32, 41)]


def test_only_allow_schedules_are_planned_ahead() -> None:
    early = T0 + M - LOOKAHEAD_MS
    assert plan(schedule(), early).due_at_ms == minutes(1)
    assert plan(schedule(), early - 1).due_at_ms == ()
    for overlap in (OverlapPolicy.SKIP, OverlapPolicy.QUEUE):
        assert plan(schedule(overlap=overlap), T0 + M - 1).due_at_ms == ()
        assert plan(schedule(overlap=overlap), T0 + M).due_at_ms == minutes(1)


# -- start, resume, edit, preview ---------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "timing", "progress"),
    [
        ("* * * * *", {}, Progress(ScheduleState.ACTIVE, T0, T0 + M)),
        ("@every 90s", {}, Progress(ScheduleState.ACTIVE, T0, T0 + 90 * S)),
        # a start time: the first slot is at or after it (for @every, the start itself)
        (
            "@every 90s",
            {"start_at_ms": T0 + 10 * M},
            Progress(ScheduleState.ACTIVE, T0 + 10 * M - 1, T0 + 10 * M),
        ),
        (
            "*/5 * * * *",
            {"start_at_ms": T0 + 7 * M},
            Progress(ScheduleState.ACTIVE, T0 + 7 * M - 1, T0 + 10 * M),
        ),
        # a start time in the past: nothing before creation is made up
        (
            "@every 90s",
            {"start_at_ms": T0 - 100 * S},
            Progress(ScheduleState.ACTIVE, T0, T0 + 80 * S),
        ),
        ("* * * * *", {"end_at_ms": T0 + 30 * S}, Progress(ScheduleState.FINISHED, T0, None)),
    ],
)
def test_start(expression: str, timing: dict[str, object], progress: Progress) -> None:
    assert start(ScheduleTiming(expression, **timing), T0) == progress  # type: ignore[arg-type]


def test_resume_does_not_make_up_the_paused_slots() -> None:
    paused = schedule(state=ScheduleState.PAUSED, cursor=T0 + 2 * M)
    assert resumed(paused, T0 + 10 * M + 5) == Progress(
        ScheduleState.ACTIVE, T0 + 10 * M + 5, T0 + 11 * M
    )
    ends = schedule(state=ScheduleState.PAUSED, end_at_ms=T0 + 5 * M)
    assert resumed(ends, T0 + 10 * M).state is ScheduleState.FINISHED


def test_edit_keeps_or_restarts_the_progress() -> None:
    subject = schedule(cursor=T0 + 3 * M)
    now = T0 + 3 * M + 20 * S
    same_timing = revised(subject, ScheduleTiming("* * * * *", max_runs=9), now)
    assert same_timing == Progress(ScheduleState.ACTIVE, T0 + 3 * M, T0 + 4 * M)
    retimed = revised(subject, ScheduleTiming("@every 15s"), now)
    assert retimed == Progress(ScheduleState.ACTIVE, now, T0 + 3 * M + 30 * S)
    paused = dataclasses.replace(subject, state=ScheduleState.PAUSED)
    assert revised(paused, ScheduleTiming("@every 15s"), now).next_at_ms is None
    finished = schedule(state=ScheduleState.FINISHED, runs=3, max_runs=3, cursor=T0 + M)
    more = revised(finished, ScheduleTiming("* * * * *", max_runs=4), now)
    assert more == Progress(ScheduleState.ACTIVE, now, T0 + 4 * M)


def test_preview() -> None:
    assert preview(schedule(), T0 + 30 * S, 3) == list(minutes(1, 2, 3))
    assert preview(schedule(max_runs=5, runs=3), T0, 5) == list(minutes(1, 2))
    assert preview(schedule(end_at_ms=T0 + 2 * M), T0, 5) == list(minutes(1, 2))
    assert preview(schedule(state=ScheduleState.FINISHED), T0, 5) == []
    paused = schedule(state=ScheduleState.PAUSED)
    assert preview(paused, T0 + 10 * M, 1) == list(minutes(11))
