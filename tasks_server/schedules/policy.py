"""Decisions for recurring schedules: which slots fire now (misfire and overlap policies),
where a new, resumed or edited schedule starts, and a preview of its next slots.

Pure: every function takes ``now_ms`` and reads nothing else. The runner (runner.py) and
the API act on what these return. docs/schedules.md explains the rules for users.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import cron
from ..models import (
    MisfirePolicy,
    OverlapPolicy,
    Schedule,
    ScheduleFire,
    ScheduleState,
    ScheduleTiming,
)

# A slot fired within this long after its time is on time; older ones are missed and
# follow the misfire policy. Lateness is measured against the time the runner's pass
# began, so the time a large pass takes is not counted.
MISFIRE_GRACE_MS = 2_000
# at most one slot per second can be on time (the finest cron and @every step is 1 s)
_ON_TIME_BOUND = MISFIRE_GRACE_MS // cron.MIN_EVERY_MS + 1
# An `allow` schedule's run is created up to this long before its slot (due at the slot):
# one pass, one transaction, serves many slots instead of one each, and the task is
# already armed in the task scheduler when its time comes. The other overlap policies must
# look at the previous task at the slot itself, so they are never planned early.
LOOKAHEAD_MS = 1_000


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a schedule stands: its state, the slot up to which everything is decided,
    and when the runner looks at it next (None unless ACTIVE)."""

    state: ScheduleState
    cursor_ms: int
    next_at_ms: int | None


def anchor_ms(timing: ScheduleTiming, created_at_ms: int) -> int:
    """Where ``@every`` intervals count from: the start time, else the creation time."""
    return created_at_ms if timing.start_at_ms is None else timing.start_at_ms


def _anchor(schedule: Schedule) -> int:
    return anchor_ms(schedule.timing, schedule.created_at_ms)


def next_slot(timing: ScheduleTiming, anchor: int, after_ms: int) -> int | None:
    """The first slot after ``after_ms`` that is not past the end time, or None."""
    slot = cron.next_after(cron.parse(timing.expression), after_ms, timing.timezone, anchor)
    return _within_end(timing, slot)


def _within_end(timing: ScheduleTiming, slot: int | None) -> int | None:
    if slot is None or (timing.end_at_ms is not None and slot > timing.end_at_ms):
        return None
    return slot


def progress(timing: ScheduleTiming, anchor: int, cursor_ms: int, runs: int) -> Progress:
    """ACTIVE with the next slot after ``cursor_ms``, or FINISHED when the runs are used
    up or no slot is left before the end time."""
    if _runs_used_up(timing, runs):
        return Progress(ScheduleState.FINISHED, cursor_ms, None)
    return _settled(timing, cursor_ms, runs, next_slot(timing, anchor, cursor_ms))


def _runs_used_up(timing: ScheduleTiming, runs: int) -> bool:
    return timing.max_runs is not None and runs >= timing.max_runs


def _settled(timing: ScheduleTiming, cursor_ms: int, runs: int, slot: int | None) -> Progress:
    """Progress when the next slot (already checked against the end time) is known."""
    if slot is None or _runs_used_up(timing, runs):
        return Progress(ScheduleState.FINISHED, cursor_ms, None)
    return Progress(ScheduleState.ACTIVE, cursor_ms, slot)


def start(timing: ScheduleTiming, now_ms: int) -> Progress:
    """A new schedule: the first slot is the first one after creation (at or after the
    start time when one is given); nothing before creation is made up."""
    return progress(timing, anchor_ms(timing, now_ms), _first_cursor(timing, now_ms), 0)


def _first_cursor(timing: ScheduleTiming, now_ms: int) -> int:
    """Nothing up to now is due, nor anything before the start time."""
    return now_ms if timing.start_at_ms is None else max(now_ms, timing.start_at_ms - 1)


def resumed(schedule: Schedule, now_ms: int) -> Progress:
    """A resumed schedule continues with the next slot after now: slots that passed
    while it was paused are not made up."""
    cursor = max(schedule.cursor_ms, now_ms)
    return progress(schedule.timing, _anchor(schedule), cursor, schedule.runs)


def revised(schedule: Schedule, timing: ScheduleTiming, now_ms: int) -> Progress:
    """Progress after an edit. New timing (expression, zone or start) counts from the
    edit as a new schedule would; a PAUSED schedule stays paused; a FINISHED one whose
    new bounds allow more runs becomes ACTIVE again, from now."""
    old = schedule.timing
    retimed = (old.expression, old.timezone, old.start_at_ms) != (
        timing.expression,
        timing.timezone,
        timing.start_at_ms,
    )
    cursor = schedule.cursor_ms
    if retimed:
        cursor = _first_cursor(timing, now_ms)
    elif schedule.state is ScheduleState.FINISHED:
        cursor = max(cursor, now_ms)
    if schedule.state is ScheduleState.PAUSED:
        return Progress(ScheduleState.PAUSED, cursor, None)
    return progress(timing, anchor_ms(timing, schedule.created_at_ms), cursor, schedule.runs)


def preview(schedule: Schedule, now_ms: int, count: int) -> list[int]:
    """The next ``count`` slots from now (at most; fewer when the end time or the
    maximum number of runs comes first). A paused schedule shows what resuming now
    would give; a finished one has none."""
    if schedule.state is ScheduleState.FINISHED:
        return []
    timing = schedule.timing
    if timing.max_runs is not None:
        count = min(count, timing.max_runs - schedule.runs)
    slots: list[int] = []
    after = max(schedule.cursor_ms, now_ms)
    while len(slots) < count:
        slot = next_slot(timing, _anchor(schedule), after)
        if slot is None:
            break
        slots.append(slot)
        after = slot
    return slots


# -- the runner's decision ----------------------------------------------------------------


def lookahead_ms(timing: ScheduleTiming) -> int:
    """How long before a slot its run may be created (LOOKAHEAD_MS for ``allow``)."""
    return LOOKAHEAD_MS if timing.overlap is OverlapPolicy.ALLOW else 0


def plan(schedule: Schedule, now_ms: int) -> ScheduleFire:
    """What to do with a due ACTIVE schedule at ``now_ms``: the tasks to create (one per
    chosen slot, due at that slot) and the progress to write with them.

    Due slots are those after the cursor and not after min(now + lookahead, end).
    On-time slots fire; missed ones follow the misfire policy; then the overlap policy
    filters the result against the schedule's last task. The cursor moves past every
    due slot it decided, so the same slot is never planned twice.
    """
    timing = schedule.timing
    horizon = now_ms + lookahead_ms(timing)
    if timing.end_at_ms is not None:
        horizon = min(horizon, timing.end_at_ms)
    due, following = due_slots(schedule, horizon)
    if not due:
        state = _settled(timing, schedule.cursor_ms, schedule.runs, _within_end(timing, following))
        return _fire(schedule, (), state)
    fired, cursor = apply_overlap(schedule, due, chosen_runs(schedule, due, now_ms))
    if timing.max_runs is not None:
        fired = fired[: max(timing.max_runs - schedule.runs, 0)]
    runs = schedule.runs + len(fired)
    if cursor == due[-1]:  # the usual case: the next slot is known already
        state = _settled(timing, cursor, runs, _within_end(timing, following))
    else:  # `queue` stopped at an earlier slot
        state = progress(timing, _anchor(schedule), cursor, runs)
    return _fire(schedule, tuple(fired), state)


def _fire(schedule: Schedule, fired: tuple[int, ...], state: Progress) -> ScheduleFire:
    return ScheduleFire(
        schedule_id=schedule.id,
        version=schedule.version,
        due_at_ms=fired,
        cursor_ms=state.cursor_ms,
        next_at_ms=state.next_at_ms,
        state=state.state,
    )


def due_slots(schedule: Schedule, horizon_ms: int) -> tuple[list[int], int | None]:
    """The slots after the cursor and at or before ``horizon_ms``, oldest first, and
    the first slot after ``horizon_ms`` (None when there is none).

    After a long downtime only the latest catch_up_limit + a few (enough for every
    on-time slot) are listed: older ones could never fire, and the cursor passes them.
    """
    timing = schedule.timing
    spec = cron.parse(timing.expression)
    zone, anchor = timing.timezone, _anchor(schedule)
    first = cron.next_after(spec, schedule.cursor_ms, zone, anchor)
    if first is None or first > horizon_ms:
        return [], first
    following = cron.next_after(spec, first, zone, anchor)
    if following is None or following > horizon_ms:
        return [first], following  # the common case: one slot is due
    bound = timing.catch_up_limit + _ON_TIME_BOUND
    latest = cron.latest_at_or_before(spec, horizon_ms, zone, anchor)
    slots: list[int] = []
    slot = latest
    while slot is not None and slot > schedule.cursor_ms and len(slots) < bound:
        slots.append(slot)
        slot = cron.latest_at_or_before(spec, slot - 1, zone, anchor)
    slots.reverse()
    assert latest is not None
    return slots, cron.next_after(spec, latest, zone, anchor)


def chosen_runs(schedule: Schedule, due: list[int], now_ms: int) -> list[int]:
    """The misfire policy: the due slots that get a run, oldest first.

    A slot is missed when it is more than MISFIRE_GRACE_MS old. For ``queue`` schedules
    lateness counts from the end of the previous run when that is later: slots that
    waited for it are queued, not missed (at most catch_up_limit of them are kept).
    """
    timing = schedule.timing
    late_before = now_ms - MISFIRE_GRACE_MS
    released = schedule.last_task_ended_at_ms
    if timing.overlap is OverlapPolicy.QUEUE and released is not None and released >= late_before:
        return due[-timing.catch_up_limit :]
    on_time = [slot for slot in due if slot >= late_before]
    missed = [slot for slot in due if slot < late_before]
    if timing.misfire is MisfirePolicy.SKIP:
        return on_time
    if timing.misfire is MisfirePolicy.RUN_ONCE:
        return missed[-1:] + on_time
    return missed[-timing.catch_up_limit :] + on_time


def apply_overlap(schedule: Schedule, due: list[int], runs: list[int]) -> tuple[list[int], int]:
    """The overlap policy: (slots to fire, new cursor).

    ``allow`` fires every run. ``skip`` fires nothing while the last task is pending,
    else only the latest run. ``queue`` fires the earliest run once the last task has
    ended; the cursor stops at it, so the later runs wait for that task in turn.
    """
    overlap = schedule.timing.overlap
    if overlap is OverlapPolicy.ALLOW:
        return runs, due[-1]
    if overlap is OverlapPolicy.SKIP:
        return ([] if schedule.last_task_pending else runs[-1:]), due[-1]
    if schedule.last_task_pending:
        return [], schedule.cursor_ms
    if len(runs) > 1:
        return runs[:1], runs[0]
    return runs, due[-1]
