"""Alert rules, incidents and deliveries, and their SQL."""

from __future__ import annotations

import sqlite3
from typing import Any, LiteralString

from pydantic import TypeAdapter

from ...alerting import AlertDelivery, AlertRule, DeliveryStatus, Incident
from ...errors import Conflict, NotFound
from .base import StoreBase

RULE = TypeAdapter(AlertRule)
INCIDENT = TypeAdapter(Incident)

RULE_INSERT: LiteralString = (
    "INSERT INTO alert_rule (id, owner_id, name, definition, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
RULE_UPDATE: LiteralString = (
    "UPDATE alert_rule SET name = ?, definition = ?, updated_at = ? WHERE id = ? AND owner_id = ?"
)
RULE_BY_ID: LiteralString = "SELECT definition FROM alert_rule WHERE id = ? AND owner_id = ?"
RULE_LIST: LiteralString = "SELECT definition FROM alert_rule WHERE owner_id = ? ORDER BY name"
RULE_DELETE: LiteralString = "DELETE FROM alert_rule WHERE id = ? AND owner_id = ?"
INCIDENT_GET: LiteralString = "SELECT state FROM alert_incident WHERE rule_id = ? AND subject = ?"
_INCIDENTS: LiteralString = (
    "SELECT r.definition, i.state FROM alert_incident i JOIN alert_rule r ON r.id = i.rule_id "
)
INCIDENT_LIST: LiteralString = (
    _INCIDENTS + "WHERE r.owner_id = ? ORDER BY r.owner_id, r.name, i.subject"
)
INCIDENT_LIST_ALL: LiteralString = _INCIDENTS + "ORDER BY r.owner_id, r.name, i.subject"
INCIDENT_PUT: LiteralString = (
    "INSERT INTO alert_incident (rule_id, subject, state) VALUES (?, ?, ?) "
    "ON CONFLICT (rule_id, subject) DO UPDATE SET state = excluded.state"
)
DELIVERY_INSERT: LiteralString = (
    "INSERT INTO alert_delivery (id, owner_id, rule_id, kind, channel, status, subject, error, "
    "task_id, created_at) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
    "WHERE EXISTS (SELECT 1 FROM alert_rule WHERE id = ?)"
)
DELIVERY_COLUMNS: LiteralString = (
    "id, owner_id, rule_id, kind, channel, status, subject, created_at, error, task_id"
)
DELIVERY_LIST: LiteralString = (
    f"SELECT {DELIVERY_COLUMNS} FROM alert_delivery WHERE owner_id = ? "
    "AND (? IS NULL OR rule_id = ?) ORDER BY created_at DESC, rowid DESC LIMIT ?"
)
DELIVERY_COUNT: LiteralString = (
    "SELECT count(*) FROM alert_delivery WHERE owner_id = ? AND created_at >= ? "
    "AND status <> 'suppressed'"
)


def delivery_from_row(row: Any) -> AlertDelivery:
    return AlertDelivery(
        id=row[0],
        owner_id=row[1],
        rule_id=row[2],
        kind=row[3],
        channel=row[4],
        status=DeliveryStatus(row[5]),
        subject=row[6],
        created_at_ms=row[7],
        error=row[8],
        task_id=row[9],
    )


class AlertOps(StoreBase):
    def _seal_rule(self, rule: AlertRule) -> bytes:
        return self._sealer.seal(RULE.dump_json(rule))

    def _open_rule(self, blob: bytes) -> AlertRule:
        return RULE.validate_json(self._sealer.open(blob))

    async def create_alert_rule(self, rule: AlertRule) -> AlertRule:
        params = (
            rule.id,
            rule.owner_id,
            rule.name,
            self._seal_rule(rule),
            rule.created_at_ms,
            rule.updated_at_ms,
        )

        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(RULE_INSERT, params)
            except sqlite3.IntegrityError as exc:
                raise Conflict("An alert rule of that name exists") from exc

        await self._write(op)
        return rule

    async def update_alert_rule(self, rule: AlertRule) -> AlertRule:
        params = (rule.name, self._seal_rule(rule), rule.updated_at_ms, rule.id, rule.owner_id)

        def op(conn: sqlite3.Connection) -> None:
            try:
                updated = conn.execute(RULE_UPDATE, params).rowcount
            except sqlite3.IntegrityError as exc:
                raise Conflict("An alert rule of that name exists") from exc
            if not updated:
                raise NotFound()

        await self._write(op)
        return rule

    async def get_alert_rule(self, owner_id: str, rule_id: str) -> AlertRule:
        rows = await self._read(RULE_BY_ID, (rule_id, owner_id))
        if not rows:
            raise NotFound()
        return self._open_rule(rows[0][0])

    async def list_alert_rules(self, owner_id: str) -> list[AlertRule]:
        return [self._open_rule(row[0]) for row in await self._read(RULE_LIST, (owner_id,))]

    async def delete_alert_rule(self, owner_id: str, rule_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if not conn.execute(RULE_DELETE, (rule_id, owner_id)).rowcount:
                raise NotFound()

        await self._write(op)

    async def get_incident(self, rule_id: str, subject: str) -> Incident | None:
        rows = await self._read(INCIDENT_GET, (rule_id, subject))
        return INCIDENT.validate_json(self._sealer.open(rows[0][0])) if rows else None

    async def list_incidents(self, owner_id: str | None) -> list[tuple[AlertRule, Incident]]:
        if owner_id is None:
            rows = await self._read(INCIDENT_LIST_ALL, ())
        else:
            rows = await self._read(INCIDENT_LIST, (owner_id,))
        return [
            (self._open_rule(row[0]), INCIDENT.validate_json(self._sealer.open(row[1])))
            for row in rows
        ]

    async def save_incident(self, incident: Incident) -> None:
        state = self._sealer.seal(INCIDENT.dump_json(incident))
        params = (incident.rule_id, incident.subject, state)

        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(INCIDENT_PUT, params)
            except sqlite3.IntegrityError:
                pass  # the rule was deleted meanwhile: nothing to keep

        await self._write(op)

    async def add_alert_delivery(self, delivery: AlertDelivery) -> None:
        d = delivery
        params = (
            d.id,
            d.owner_id,
            d.rule_id,
            d.kind,
            d.channel,
            d.status.value,
            d.subject,
            d.error,
            d.task_id,
            d.created_at_ms,
            d.rule_id,
        )

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(DELIVERY_INSERT, params)

        await self._write(op)

    async def list_alert_deliveries(
        self, owner_id: str, rule_id: str | None, limit: int
    ) -> list[AlertDelivery]:
        rows = await self._read(DELIVERY_LIST, (owner_id, rule_id, rule_id, limit))
        return [delivery_from_row(row) for row in rows]

    async def count_alert_deliveries(self, owner_id: str, since_ms: int) -> int:
        rows = await self._read(DELIVERY_COUNT, (owner_id, since_ms))
        count: int = rows[0][0]
        return count
