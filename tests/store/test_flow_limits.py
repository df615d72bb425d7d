"""What a claim may take of a flow-control key shared by several nodes (PostgreSQL): the
key's token bucket and its parallelism, computed from the key's locked row."""

from __future__ import annotations

from tasks_server.store.postgres.flow import RETRY_FULL_MS, RETRY_PAUSED_MS, allowance

T = 1_767_225_600_000


def test_a_new_key_starts_with_a_full_burst() -> None:
    key = allowance(5, 1000, None, False, None, None, in_flight=0, now_ms=T)
    assert key.allowed == 5 and key.credit == 5000
    assert [key.take() for _ in range(6)] == [True] * 5 + [False]
    assert key.credit_after(5) == 0


def test_parallelism_counts_the_calls_in_flight_on_every_node() -> None:
    key = allowance(None, 1000, 2, False, None, None, in_flight=1, now_ms=T)
    assert key.allowed == 1
    full = allowance(None, 1000, 2, False, None, None, in_flight=2, now_ms=T)
    assert full.allowed == 0 and full.retry_ms == T + RETRY_FULL_MS
    paused = allowance(5, 1000, 2, True, None, None, in_flight=0, now_ms=T)
    assert paused.allowed == 0 and paused.retry_ms == T + RETRY_PAUSED_MS


def test_the_bucket_refills_at_the_rate_and_is_tried_again_at_the_next_token() -> None:
    empty = allowance(5, 1000, None, False, 0, T, in_flight=0, now_ms=T + 100)
    assert empty.allowed == 0 and empty.retry_ms == T + 200  # one token per 200 ms
    one = allowance(5, 1000, None, False, 0, T, in_flight=0, now_ms=T + 250)
    assert one.allowed == 1 and one.credit_after(1) == 250
    full = allowance(5, 1000, None, False, 0, T, in_flight=0, now_ms=T + 60_000)
    assert full.allowed == 5  # never more than the burst


def test_the_buckets_time_never_goes_back() -> None:
    # a node that read its time before waiting for the key's lock earns nothing twice
    late = allowance(5, 1000, None, False, 0, T + 500, in_flight=0, now_ms=T + 300)
    assert late.allowed == 0 and late.at_ms == T + 500
