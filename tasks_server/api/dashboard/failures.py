"""The failures page: the open alert incidents, and the dead-letter queue (the owner's
tasks in ERROR) with filters, one page at a time, and replay or delete of everything a
filter matches."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from ...errors import NotFound, ValidationFailed
from ...store import DeadLetterFilter
from ..dead_letters import arm_replayed
from ..services import Services, services
from .session import checked_form, flash, redirect, render, require_owner
from .tasks import BadFilter, parse_time

PAGE_SIZE = 50
BULK_LIMIT = 1000  # tasks one bulk replay or delete acts on, as the API's largest limit
REPLAY_RATE = 50  # replayed tasks per second: a large replay does not hit a target at once
_CURSOR = re.compile(r"^(\d{1,15})\.([A-Z0-9]{24})$")
_FIELDS = ("from", "to", "status", "schedule", "label")


def parse_filter(params: dict[str, str]) -> DeadLetterFilter:
    """The page's filter fields as a DeadLetterFilter. Raises BadFilter."""
    status = params.get("status", "").strip()
    if status and not (status.isdigit() and int(status) < 1000):
        raise BadFilter("status must be an HTTP status code")
    label = None
    if params.get("label", "").strip():
        key, sep, value = params["label"].partition("=")
        label = (key.strip(), value.strip() if sep else None)
    schedule = params.get("schedule", "").strip().upper() or None
    if schedule is not None and not re.fullmatch(r"[A-Z0-9]{24}", schedule):
        raise BadFilter("schedule must be a schedule id")
    return DeadLetterFilter(
        failed_from_ms=parse_time(params.get("from", ""), "from"),
        failed_until_ms=parse_time(params.get("to", ""), "to"),
        status_code=int(status) if status else None,
        schedule_id=schedule,
        label=label,
    )


def _cursor(raw: str) -> tuple[int, str] | None:
    if not raw:
        return None
    match = _CURSOR.match(raw)
    if match is None:
        raise BadFilter("the page cursor is not valid")
    return int(match.group(1)), match.group(2)


async def failures(request: Request) -> Response:
    who, owner_id = await require_owner(request)
    params = {k: v for k, v in request.query_params.items() if k in (*_FIELDS, "after")}
    try:
        where = parse_filter(params)
        after = _cursor(params.get("after", ""))
    except BadFilter as exc:
        return render(request, "failures.html", who, 400, error=str(exc), params=params, rows=[])
    store = services(request).store
    rows = await store.list_dead_letters(owner_id, where, PAGE_SIZE, after)
    incidents = [pair for pair in await store.list_incidents(owner_id) if pair[1].is_open]
    next_link = None
    if len(rows) == PAGE_SIZE:
        kept = {k: v for k, v in params.items() if v and k != "after"}
        last = rows[-1]
        next_link = "?" + urlencode({**kept, "after": f"{last.estimate_end_at_ms}.{last.id}"})
    filters = {k: params.get(k, "") for k in _FIELDS}
    return render(
        request,
        "failures.html",
        who,
        params=params,
        filters=filters,
        rows=rows,
        next_link=next_link,
        incidents=incidents,
    )


async def bulk(request: Request) -> Response:
    """Replay or delete every dead letter the posted filter matches (up to BULK_LIMIT)."""
    _, owner_id = await require_owner(request)
    form = await checked_form(request)
    action = str(request.path_params["action"])
    if action not in ("replay", "delete"):
        raise NotFound()
    params = {k: form.get(k, "") for k in _FIELDS}
    back = "/ui/failures?" + urlencode({k: v for k, v in params.items() if v})
    try:
        where = parse_filter(params)
    except BadFilter as exc:
        flash(request, f"Not done: {exc}")
        return redirect(back)
    app = services(request)
    matched = await app.store.list_dead_letters(owner_id, where, BULK_LIMIT)
    ids = [task.id for task in matched]
    if action == "replay":
        flash(request, await _replay(app, owner_id, ids))
    elif not any(params.values()):
        raise ValidationFailed(message="Give a filter to delete by (a time range, status…)")
    else:
        deleted = await app.store.delete_dead_letters(owner_id, ids)
        flash(request, f"Deleted {deleted} failed task(s).")
    return redirect(back)


async def _replay(app: Services, owner_id: str, ids: list[str]) -> str:
    now = app.clock.now_ms()
    replayed = await app.store.replay_dead_letters(owner_id, ids, now, 1000 // REPLAY_RATE)
    await arm_replayed(app, owner_id, replayed)  # with each task's flow-control key
    return f"Replayed {len(replayed)} failed task(s), {REPLAY_RATE} a second."
