"""``tasks-server migrate-data --from sqlite:PATH --to postgresql://…``: everything a
stopped server's SQLite database holds arrives in PostgreSQL, counted; a database a server
is using, on either side, is refused and left as it was."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psycopg
import pytest

from tasks_server.alerting import AlertDelivery, DeliveryStatus, Incident
from tasks_server.cli.main import main
from tasks_server.models import (
    FlowControl,
    FlowPeriod,
    FlowSetting,
    HostLimit,
    OwnerSecurity,
    Schedule,
)
from tasks_server.sealing import Sealer
from tasks_server.store import Store
from tasks_server.store.migrate import migrate as migrate_sqlite
from tasks_server.store.postgres import PostgresStore
from tasks_server.store.sqlite import DatabaseLock, SqliteStore, connect
from tasks_server.store.transfer import TABLES
from tasks_server.workflows.model import StepState
from tests.store.test_contract import (
    T0,
    add_schedule,
    alert_rule,
    fire,
    make_owner,
    new_task,
    success,
)
from tests.store.test_workflow_contract import Watcher, finish, run_of, step

KEY = "migrate-data-key"


async def cli(argv: list[str]) -> int:
    """The command as run from a shell (it runs its own event loop, so in a thread here)."""
    return await asyncio.to_thread(main, argv)


def watch(store: Store) -> None:
    """Build workflow steps as the engine would (the store calls back for each)."""
    found = Watcher()
    store.watch_workflows(found.build, found.step_started, found.finished.append)


async def fill(store: Store) -> dict[str, object]:
    """Owners (one with signing secrets and allowed hosts), tasks in every state (one
    with history, one in flight), a schedule that fired once, a paused flow-control key, a
    host limit, a workflow run halfway, an alert rule with an incident and a delivery."""
    owner = await make_owner(store)
    other = await make_owner(store, "owner-two", limit=0)
    done = await store.create_task(owner.id, new_task(due=T0), T0)
    await store.claim_due([done.id], T0)
    await store.record_outcomes([success(done.id, 1, T0 + 5)])
    flying = await store.create_task(owner.id, new_task(due=T0), T0)
    await store.claim_due([flying.id], T0)
    paused = await store.create_task(other.id, new_task(due=T0 + 9000), T0)
    await store.pause_task(other.id, paused.id, T0 + 1)
    schedule: Schedule = await add_schedule(store, owner.id)
    [(fired, *_)] = await store.fire_schedule(fire(schedule, T0 + 60_000), T0) or []
    rule = await store.create_alert_rule(alert_rule(owner))
    await store.save_incident(Incident(rule.id, "", is_open=True, streak=1))
    await store.add_alert_delivery(
        AlertDelivery("D1", owner.id, rule.id, "alert", "email", DeliveryStatus.SENT, "s", T0)
    )
    security = OwnerSecurity(b"secret-now", b"secret-before", T0 + 1, True, ("example.com",))
    await store.save_owner_security(owner.id, security)
    flow = FlowSetting(FlowControl("emails", 10, FlowPeriod.MINUTE, 2), paused=True)
    await store.save_flow_control(owner.id, flow, T0)
    await store.save_host_limit(HostLimit("api.example.com", 4, 2.5, T0))
    watch(store)
    run = await store.create_run(owner.id, run_of(step("a"), step("b", "a")), T0)
    await finish(store, run.steps[0].task_id or "", T0 + 1)
    return {
        "rule": rule,
        "security": security,
        "flow": flow,
        "run": run.id,
        "owner": owner.id,
        "other": other.id,
        "done": done.id,
        "flying": flying.id,
        "paused": paused.id,
        "schedule": schedule.id,
        "fired": fired,
    }


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    path = tmp_path / "old.db"
    store = SqliteStore(path, Sealer(KEY))
    await store.open()
    try:
        ids = await fill(store)
    finally:
        await store.close()
    return path, ids


async def test_everything_arrives_counted(
    sqlite_db: tuple[Path, dict[str, object]],
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    path, ids = sqlite_db
    monkeypatch.chdir(tmp_path)
    assert await cli(["migrate-data", "--from", f"sqlite:{path}", "--to", database_url]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "copied": {
            "seal_check": 1,
            "owner": 2,
            "owner_security": 1,
            "flow_control": 1,
            "host_limit": 1,
            "schedule": 1,
            "task": 6,  # 4 + the run's two steps
            "attempt": 3,
            "workflow_run": 1,
            "workflow_step": 2,
            "workflow_edge": 1,
            "alert_rule": 1,
            "alert_incident": 1,
            "alert_delivery": 1,
        },
        "verified": True,
    }
    store = PostgresStore(database_url, Sealer(KEY))
    await store.open()
    try:
        owner, other = str(ids["owner"]), str(ids["other"])
        queues = {o.id: o.tasks_in_queue for o in await store.list_owners()}
        assert queues == {owner: 3, other: 1}  # in flight, fired, and the run's next step
        assert await store.owner_security(owner) == ids["security"]
        assert await store.get_flow_control(owner, "emails") == ids["flow"]
        assert await store.list_host_limits() == [HostLimit("api.example.com", 4, 2.5, T0)]
        run = await store.get_run(owner, str(ids["run"]))
        assert [s.state for s in run.steps] == [StepState.SUCCESS, StepState.RUNNING]
        watch(store)
        await finish(store, run.steps[1].task_id or "", T0 + 2)  # the run goes on there
        assert (await store.get_run(owner, run.id)).state.value == "SUCCESS"
        done = await store.get_task(owner, str(ids["done"]))
        assert (done.state.value, done.status_code, done.response) == ("SUCCESS", 200, b"done")
        [record] = await store.list_attempts(owner, str(ids["done"]))
        assert record.headers == (("X-A", "1"),) and record.response == b"done"
        assert await store.get_spec(owner, str(ids["done"])) == new_task().spec
        assert (await store.get_task(other, str(ids["paused"]))).state.value == "PAUSED"
        rule = ids["rule"]
        assert await store.get_alert_rule(owner, rule.id) == rule  # type: ignore[attr-defined]
        assert (await store.get_incident(rule.id, "")) is not None  # type: ignore[attr-defined]
        assert len(await store.list_alert_deliveries(owner, None, 10)) == 1
        schedule = await store.get_schedule(owner, str(ids["schedule"]))
        assert schedule.runs == 1 and schedule.last_task_id == ids["fired"]
        # the attempt in flight when the old server stopped is interrupted; its task is due
        [interrupted] = await store.list_attempts(owner, str(ids["flying"]))
        assert interrupted.error is not None and "interrupted" in interrupted.error
        due = {d.task_id: d.due_at_ms for d in await store.due_before(T0 + 10**9, 10)}
        assert due[str(ids["flying"])] == T0
        [again] = await store.claim_due([str(ids["flying"])], T0 + 1)
        assert again.number == 2
    finally:
        await store.close()


async def test_a_database_in_use_is_refused(
    sqlite_db: tuple[Path, dict[str, object]],
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    path, _ = sqlite_db
    monkeypatch.chdir(tmp_path)
    command = ["migrate-data", "--from", f"sqlite:{path}", "--to", database_url]
    serving = DatabaseLock(path)
    serving.acquire_shared()  # what a server on the SQLite file holds
    try:
        assert await cli(command) == 1
        assert "in use by a running tasks-server" in capsys.readouterr().err
    finally:
        serving.release()
    node = PostgresStore(database_url, Sealer(KEY))  # a node serving the target
    await node.open()
    try:
        assert await cli(command) == 1
        assert "in use by" in capsys.readouterr().err
    finally:
        await node.close()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        row = await (await conn.execute("SELECT count(*) FROM owner")).fetchone()
        assert row == (0,)  # nothing was copied
    assert await cli(command) == 0
    capsys.readouterr()
    assert await cli(command) == 1  # a second copy would mix two databases
    assert "already holds" in capsys.readouterr().err


def test_every_table_of_the_schema_is_copied(tmp_path: Path) -> None:
    conn = connect(tmp_path / "schema.db", "FULL")
    migrate_sqlite(conn)
    tables = {
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    conn.close()
    assert tables == set(TABLES)
