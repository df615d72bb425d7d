from __future__ import annotations

from tasks_server.engine.timers import DueTimers


def test_pop_due_in_time_order() -> None:
    timers = DueTimers()
    timers.push("c", 30)
    timers.push("a", 10)
    timers.push("b", 20)
    assert timers.next_due() == 10
    assert timers.pop_due(25) == ["a", "b"]
    assert timers.pop_due(25) == []
    assert timers.next_due() == 30 and len(timers) == 1


def test_equal_due_times_keep_push_order() -> None:
    timers = DueTimers()
    for name in "xyz":
        timers.push(name, 5)
    assert timers.pop_due(5) == ["x", "y", "z"]


def test_repush_supersedes_and_discard_forgets() -> None:
    timers = DueTimers()
    timers.push("a", 10)
    timers.push("a", 50)
    timers.push("b", 20)
    timers.discard("b")
    assert timers.next_due() == 50
    assert timers.pop_due(40) == []
    assert timers.pop_due(50) == ["a"]
    assert timers.next_due() is None and len(timers) == 0


def test_limit_leaves_the_rest() -> None:
    timers = DueTimers()
    for index in range(10):
        timers.push(str(index), index)
    assert timers.pop_due(100, limit=3) == ["0", "1", "2"]
    assert len(timers) == 7 and "3" in timers


def test_compaction_keeps_live_entries() -> None:
    timers = DueTimers()
    for round_ in range(3):
        for index in range(2000):
            timers.push(f"t{index}", round_ * 10_000 + index)
    assert len(timers) == 2000
    assert timers.pop_due(20_000 + 1) == ["t0", "t1"]


def test_equal_due_times_pop_by_priority_then_push_order() -> None:
    timers = DueTimers()
    timers.push("low", 100, -5)
    timers.push("plain", 100)
    timers.push("high", 100, 80)
    timers.push("plain-2", 100)
    timers.push("early", 99, -100)
    assert timers.pop_due(100) == ["early", "high", "plain", "plain-2", "low"]


def test_due_counts_follow_push_repush_discard_and_pop() -> None:
    timers = DueTimers()
    for name in "abc":
        timers.push(name, 1_050)
    timers.push("d", 1_250)
    timers.push("a", 1_260)  # moves a from the 1000 bucket to the 1200 one
    timers.discard("b")
    assert list(timers.due_counts(1_000, 2_000)) == [(1_000, 1), (1_200, 2)]
    assert timers.pop_due(1_100) == ["c"]
    assert list(timers.due_counts(1_000, 2_000)) == [(1_200, 2)]
    assert list(timers.due_counts(1_000, 1_100)) == []
