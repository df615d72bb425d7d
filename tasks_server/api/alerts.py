"""Alert endpoints: create, list, read, update, delete and test alert rules, and list
their deliveries. Every call is scoped to the caller: another owner's rule is missing."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ..alerting import AlertDelivery, AlertEvent, AlertRule, Expectation, Incident, Scope
from ..alerts.incidents import MessageKind
from ..alerts.messages import compose
from ..errors import NotFound, ValidationFailed
from ..store.ids import new_task_id
from .alert_schemas import AlertIn, DeliveryQuery
from .convert import field_error, request_to_wire, to_request
from .errors import validation_failed
from .queues import merge_patch
from .services import Services, services
from .wire import DONE, answer, query_of, read_json

_RULE_ID = re.compile(r"[0-9A-Z]{24}")


def _rule_id(request: Request) -> str:
    raw = str(request.path_params["rule_id"]).upper()
    if not _RULE_ID.fullmatch(raw):
        raise NotFound()
    return raw


def record(rule: AlertRule) -> dict[str, Any]:
    """The rule in the shape it was created in, plus its id and times."""
    out: dict[str, Any] = {"id": rule.id, **definition(rule)}
    out["createdAt"] = rule.created_at_ms
    out["updatedAt"] = rule.updated_at_ms
    return out


def definition(rule: AlertRule) -> dict[str, Any]:
    wire: dict[str, Any] = {"name": rule.name, "on": rule.on.value}
    scope = rule.scope
    if scope.schedule_id is not None:
        wire["scope"] = {"schedule": scope.schedule_id}
    elif scope.label is not None:
        key, value = scope.label
        wire["scope"] = {"label": key if value is None else f"{key}={value}"}
    wire["consecutive"] = rule.consecutive
    if rule.expect is not None:
        expect: dict[str, Any] = {}
        if rule.expect.statuses:
            expect["statusCodes"] = list(rule.expect.statuses)
        if rule.expect.body_contains is not None:
            expect["bodyContains"] = rule.expect.body_contains
        if rule.expect.body_regex is not None:
            expect["bodyRegex"] = rule.expect.body_regex
        wire["expect"] = expect
    if rule.email_to:
        wire["channel"] = {"email": {"to": list(rule.email_to)}}
    elif rule.webhook is not None:
        wire["channel"] = {"webhook": request_to_wire(rule.webhook)}
    return wire


def delivery_record(delivery: AlertDelivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "ruleId": delivery.rule_id,
        "kind": delivery.kind,
        "channel": delivery.channel,
        "status": delivery.status.value,
        "subject": delivery.subject,
        "error": delivery.error,
        "taskId": delivery.task_id,
        "createdAt": delivery.created_at_ms,
    }


async def _parse(app: Services, owner_id: str, data: Any) -> AlertIn:
    try:
        return AlertIn.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc, data) from exc


async def _scope(app: Services, owner_id: str, body: AlertIn) -> Scope:
    if body.scope is None:
        return Scope()
    if body.scope.schedule is not None:
        try:
            schedule = await app.store.get_schedule(owner_id, body.scope.schedule)
        except NotFound:
            raise field_error(("scope", "schedule"), "No such schedule") from None
        return Scope(schedule_id=schedule.id)
    if body.scope.label is not None:
        key, sep, value = body.scope.label.partition("=")
        return Scope(label=(key, value if sep else None))
    return Scope()


async def _rule(
    app: Services, owner_id: str, body: AlertIn, rule_id: str, created_at_ms: int, now_ms: int
) -> AlertRule:
    expect = None
    if body.expect is not None:
        expect = Expectation(
            tuple(body.expect.statusCodes or ()), body.expect.bodyContains, body.expect.bodyRegex
        )
    channel = body.channel
    return AlertRule(
        id=rule_id,
        owner_id=owner_id,
        name=body.name,
        on=AlertEvent(body.on),
        scope=await _scope(app, owner_id, body),
        consecutive=body.consecutive,
        expect=expect,
        email_to=tuple(channel.email.to) if channel.email is not None else None,
        webhook=to_request(channel.webhook) if channel.webhook is not None else None,
        created_at_ms=created_at_ms,
        updated_at_ms=now_ms,
    )


def _changed(app: Services, owner_id: str) -> None:
    if app.alerts is not None:
        app.alerts.rules_changed(owner_id)


async def create(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    data = await read_json(request, app.settings.max_size_body_request)
    body = await _parse(app, owner_id, data)
    now = app.clock.now_ms()
    rule = await _rule(app, owner_id, body, new_task_id(now), now, now)
    await app.store.create_alert_rule(rule)
    _changed(app, owner_id)
    return answer(request, record(rule), 201)


async def list_rules(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    return answer(request, [record(rule) for rule in await app.store.list_alert_rules(owner_id)])


async def get(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    return answer(request, record(await app.store.get_alert_rule(owner_id, _rule_id(request))))


async def update(request: Request) -> Response:
    """A JSON merge patch over the rule's definition, validated whole."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    rule = await app.store.get_alert_rule(owner_id, _rule_id(request))
    patch = await read_json(request, app.settings.max_size_body_request)
    if not isinstance(patch, dict) or not patch:
        raise ValidationFailed({"_errors": ["Expected a non-empty object"]})
    merged = merge_patch(definition(rule), patch)
    if isinstance(patch.get("channel"), dict):
        merged["channel"] = patch["channel"]  # a new channel replaces the old one whole
    body = await _parse(app, owner_id, merged)
    now = app.clock.now_ms()
    updated = await _rule(app, owner_id, body, rule.id, rule.created_at_ms, now)
    await app.store.update_alert_rule(updated)
    _changed(app, owner_id)
    return answer(request, record(updated))


async def delete(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    await app.store.delete_alert_rule(owner_id, _rule_id(request))
    _changed(app, owner_id)
    return answer(request, DONE)


async def test(request: Request) -> Response:
    """Send a test message through the rule's channel now; answers the delivery."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    rule = await app.store.get_alert_rule(owner_id, _rule_id(request))
    if app.alerts is None:
        raise NotFound()
    now = app.clock.now_ms()
    message = compose(rule, Incident(rule.id, ""), MessageKind.TEST, 0, app.alerts.public_url, now)
    delivery = await app.alerts.deliver(rule, message)
    return answer(request, delivery_record(delivery))


async def deliveries(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    rule = await app.store.get_alert_rule(owner_id, _rule_id(request))
    raw = query_of(request)
    try:
        query = DeliveryQuery.model_validate(raw)
    except ValidationError as exc:
        raise validation_failed(exc, raw) from exc
    found = await app.store.list_alert_deliveries(owner_id, rule.id, query.limit)
    return answer(request, [delivery_record(d) for d in found])
