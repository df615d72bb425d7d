"""cron: parsing and slot arithmetic with fixed instants (no clock), including month ends,
leap days and both daylight-saving transitions in Europe/Berlin and America/New_York."""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tasks_server import cron

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def ms(text: str, tz: str = "UTC") -> int:
    """``YYYY-MM-DD HH:MM[:SS]`` in zone ``tz`` (the first occurrence if repeated)."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp() * 1000)


def utc(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, ZoneInfo("UTC")).strftime("%Y-%m-%d %H:%M:%S")


def local(at_ms: int, tz: str) -> str:
    return datetime.fromtimestamp(at_ms / 1000, ZoneInfo(tz)).isoformat()


def slots(expression: str, after: int, count: int, tz: str = "UTC", anchor: int = 0) -> list[int]:
    spec = cron.parse(expression)
    found: list[int] = []
    for _ in range(count):
        slot = cron.next_after(spec, after, tz, anchor)
        assert slot is not None
        found.append(slot)
        after = slot
    return found


# -- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "fields", "every_ms"),
    [
        ("*/5 * * * *", "*/5 * * * *", None),
        ("  0   9 * *  MON-FRI ", "0 9 * * MON-FRI", None),
        ("30 0 9 * * *", "30 0 9 * * *", None),
        ("0 0 1 JAN,JUL *", "0 0 1 JAN,JUL *", None),
        ("@yearly", "0 0 1 1 *", None),
        ("@annually", "0 0 1 1 *", None),
        ("@monthly", "0 0 1 * *", None),
        ("@weekly", "0 0 * * 0", None),
        ("@daily", "0 0 * * *", None),
        ("@midnight", "0 0 * * *", None),
        ("@hourly", "0 * * * *", None),
        ("@every 10m", None, 600_000),
        ("@every 90s", None, 90_000),
        ("@every 1h30m", None, 5_400_000),
        ("@every 1.5h", None, 5_400_000),
        ("@every 2500ms", None, 2_500),
        ("@every 1s", None, 1_000),
    ],
)
def test_parse_accepts(expression: str, fields: str | None, every_ms: int | None) -> None:
    spec = cron.parse(expression)
    assert (spec.fields, spec.every_ms) == (fields, every_ms)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "Invalid schedule: expected 5 fields"),
        ("* * *", "Invalid schedule '* * *': expected 5 fields"),
        ("* * * * * * *", "expected 5 fields (minute hour day month weekday), 6 with seconds"),
        ("61 * * * *", "Invalid cron expression '61 * * * *': [61 * * * *] is not acceptable"),
        ("* * * FOO *", "Invalid cron expression '* * * FOO *'"),
        ("*/0 * * * *", "step '0' in field 0 is not acceptable"),
        ("0 0 30 2 *", "Invalid cron expression '0 0 30 2 *': it never matches a date"),
        ("@reboot", "Invalid schedule '@reboot': unknown macro"),
        ("@every", "Invalid schedule '@every': unknown macro"),
        ("@every 10", "Invalid duration '10': use numbers with units h, m, s, ms"),
        ("@every 10d", "Invalid duration '10d'"),
        ("@every 500ms", "Invalid duration '500ms': must be between 1s and 8784h"),
        ("@every 1500us", "must be a whole number of milliseconds"),
        ("@every 9000h", "must be between 1s and 8784h"),
        ("x" * 300, "Invalid schedule: expected 5 fields"),
    ],
)
def test_parse_refuses_with_a_clear_message(expression: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        cron.parse(expression)
    assert message in str(caught.value)


def test_zones_are_checked() -> None:
    assert cron.check_zone("Europe/Berlin") == "Europe/Berlin"
    assert cron.check_zone("UTC") == "UTC"
    for bad in ("Mars/Olympus", "../etc/passwd", "", "europe/berlin"):
        with pytest.raises(ValueError, match="Unknown time zone"):
            cron.check_zone(bad)


# -- next slot, UTC ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/5 * * * *", "2026-01-01 00:00", ["2026-01-01 00:05:00", "2026-01-01 00:10:00"]),
        ("*/5 * * * *", "2026-01-01 00:03:59", ["2026-01-01 00:05:00", "2026-01-01 00:10:00"]),
        ("0 9 * * MON-FRI", "2026-01-02 10:00", ["2026-01-05 09:00:00", "2026-01-06 09:00:00"]),
        ("0 0 1 JAN,JUL *", "2026-01-01 00:00", ["2026-07-01 00:00:00", "2027-01-01 00:00:00"]),
        ("15,45 8-9 * * *", "2026-01-01 08:30", ["2026-01-01 08:45:00", "2026-01-01 09:15:00"]),
        # seconds come first in a 6-field expression (as croner and robfig/cron)
        ("*/20 * * * * *", "2026-01-01 00:00", ["2026-01-01 00:00:20", "2026-01-01 00:00:40"]),
        ("30 0 9 * * *", "2026-01-01 00:00", ["2026-01-01 09:00:30", "2026-01-02 09:00:30"]),
        # month ends: the 31st skips shorter months; L is the last day
        ("0 0 31 * *", "2026-01-31 00:00", ["2026-03-31 00:00:00", "2026-05-31 00:00:00"]),
        ("0 0 L * *", "2026-01-31 00:00", ["2026-02-28 00:00:00", "2026-03-31 00:00:00"]),
        ("0 0 L 2 *", "2027-03-01 00:00", ["2028-02-29 00:00:00", "2029-02-28 00:00:00"]),
        # leap days
        ("0 12 29 2 *", "2026-01-01 00:00", ["2028-02-29 12:00:00", "2032-02-29 12:00:00"]),
        ("@yearly", "2026-06-01 00:00", ["2027-01-01 00:00:00", "2028-01-01 00:00:00"]),
        ("@monthly", "2028-02-29 00:00", ["2028-03-01 00:00:00", "2028-04-01 00:00:00"]),
        # day-of-month and day-of-week both restricted: either matches (Vixie cron)
        ("0 0 13 * FRI", "2026-02-01 00:00", ["2026-02-06 00:00:00", "2026-02-13 00:00:00"]),
    ],
)
def test_next_after_in_utc(expression: str, after: str, expected: list[str]) -> None:
    assert [utc(slot) for slot in slots(expression, ms(after), 2)] == expected


def test_next_after_is_strictly_after_and_ignores_the_milliseconds_before() -> None:
    spec = cron.parse("* * * * *")
    at = ms("2026-01-01 00:01")
    assert cron.next_after(spec, at, "UTC") == at + 60_000
    assert cron.next_after(spec, at - 1, "UTC") == at
    assert cron.next_after(spec, at - 59_999, "UTC") == at


def test_every_is_anchored_and_ignores_zones() -> None:
    anchor = ms("2026-03-29 00:00", BERLIN)
    spec = cron.parse("@every 90s")
    assert cron.next_after(spec, anchor - 5_000, BERLIN, anchor) == anchor
    assert cron.next_after(spec, anchor, BERLIN, anchor) == anchor + 90_000
    assert cron.next_after(spec, anchor + 90_000, BERLIN, anchor) == anchor + 180_000
    assert cron.latest_at_or_before(spec, anchor - 1, BERLIN, anchor) is None
    assert cron.latest_at_or_before(spec, anchor + 179_999, BERLIN, anchor) == anchor + 90_000
    # elapsed time: the jump at 02:00 changes nothing, slots stay 90 s apart
    hourly = slots("@every 1h", anchor, 4, BERLIN, anchor)
    assert [b - a for a, b in itertools.pairwise(hourly)] == [3_600_000] * 3


def test_impossible_dates_have_no_next_slot() -> None:
    spec = cron.parse("0 0 29 2 *")
    assert cron.next_after(spec, ms("2026-01-01 00:00"), "UTC") == ms("2028-02-29 00:00")


# -- daylight saving --------------------------------------------------------------------
# Berlin: 2026-03-29 02:00 CET → 03:00 CEST (01:00 UTC); 2026-10-25 03:00 CEST → 02:00 CET
# (01:00 UTC). New York: 2026-03-08 02:00 EST → 03:00 EDT (07:00 UTC); 2026-11-01
# 02:00 EDT → 01:00 EST (06:00 UTC).


@pytest.mark.parametrize(
    ("expression", "tz", "after", "expected"),
    [
        # a skipped time fires once, at the end of the jump, and the day after as usual
        (
            "30 2 * * *",
            BERLIN,
            "2026-03-28 12:00",
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
        ),
        # every slot of the skipped hour collapses into one run at 03:00
        (
            "*/15 * * * *",
            BERLIN,
            "2026-03-29 01:40",
            [
                "2026-03-29T01:45:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T03:15:00+02:00",
            ],
        ),
        (
            "@hourly",
            BERLIN,
            "2026-03-29 00:30",
            [
                "2026-03-29T01:00:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T04:00:00+02:00",
            ],
        ),
        # a repeated time fires once, at its first occurrence
        (
            "30 2 * * *",
            BERLIN,
            "2026-10-24 12:00",
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
        ),
        (
            "*/30 * * * *",
            BERLIN,
            "2026-10-25 01:40",
            [
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T03:00:00+01:00",
                "2026-10-25T03:30:00+01:00",
            ],
        ),
        (
            "@hourly",
            BERLIN,
            "2026-10-25 01:30",
            ["2026-10-25T02:00:00+02:00", "2026-10-25T03:00:00+01:00"],
        ),
        (
            "30 2 * * *",
            NEW_YORK,
            "2026-03-07 12:00",
            ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
        ),
        (
            "30 1 * * *",
            NEW_YORK,
            "2026-10-31 12:00",
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
        ),
        (
            "0,30 1-2 * * *",
            NEW_YORK,
            "2026-11-01 00:45",
            [
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T02:00:00-05:00",
                "2026-11-01T02:30:00-05:00",
            ],
        ),
        # seconds field across the jump: 02:00:00-02:59:59 all land on 03:00:00
        (
            "*/20 59 1-3 29 3 *",
            BERLIN,
            "2026-03-29 01:59:30",
            [
                "2026-03-29T01:59:40+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T03:59:00+02:00",
            ],
        ),
    ],
)
def test_daylight_saving_rules(expression: str, tz: str, after: str, expected: list[str]) -> None:
    found = slots(expression, ms(after, tz), len(expected), tz)
    assert [local(slot, tz) for slot in found] == expected


def test_second_pass_of_a_repeated_hour_fires_nothing_more() -> None:
    spec = cron.parse("*/15 * * * *")
    second_pass = ms("2026-10-25 01:10")  # 02:10 CET, the hour's second pass
    assert local(cron.next_after(spec, second_pass, BERLIN) or 0, BERLIN) == (
        "2026-10-25T03:00:00+01:00"
    )
    assert local(cron.latest_at_or_before(spec, second_pass, BERLIN) or 0, BERLIN) == (
        "2026-10-25T02:45:00+02:00"
    )


@pytest.mark.parametrize(
    ("expression", "tz", "start"),
    [
        ("*/15 * * * *", BERLIN, "2026-03-29 00:00"),
        ("*/15 * * * *", BERLIN, "2026-10-25 01:00"),
        ("30 2 * * *", BERLIN, "2026-03-01 00:00"),
        ("30 2 * * *", BERLIN, "2026-10-01 00:00"),
        ("@hourly", NEW_YORK, "2026-03-07 00:00"),
        ("0,30 1-2 * * *", NEW_YORK, "2026-10-25 00:00"),
        ("*/20 * 2 * * *", BERLIN, "2026-10-25 01:59"),
        ("*/20 * 2 * * *", BERLIN, "2026-03-29 01:59"),
    ],
)
def test_latest_at_or_before_mirrors_next_after(expression: str, tz: str, start: str) -> None:
    """Walking back from each slot gives the slot itself, then the one before it, across
    a whole daylight-saving change."""
    spec = cron.parse(expression)
    found = slots(expression, ms(start, tz), 200, tz)
    for before, slot in itertools.pairwise(found):
        assert cron.latest_at_or_before(spec, slot, tz) == slot
        assert cron.latest_at_or_before(spec, slot - 1, tz) == before
        assert cron.next_after(spec, before, tz) == slot
