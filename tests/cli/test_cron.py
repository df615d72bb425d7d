"""``tasks-server cron …`` as a user runs it, in subprocesses against a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_main import Cli
from tests.support.process import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path) as process:
        yield process


@pytest.fixture
async def cli(server: ServerProcess) -> Cli:
    return Cli(server.url)


@pytest.fixture
async def owner(cli: Cli) -> dict[str, str]:
    created = await cli("owner", "create", "cron-owner", "--json")
    assert created.code == 0, created.err
    body = created.json()
    assert isinstance(body, dict)
    cli.login(body["id"], body["key"])
    return body


async def test_cron_add_list_view_pause_resume_delete(cli: Cli, owner: dict[str, str]) -> None:
    added = await cli(
        "cron",
        "add",
        "nightly",
        "30 2 * * *",
        "http://127.0.0.1:9/report",
        "-X",
        "POST",
        "-H",
        "X-Team: ops",
        "--json-data",
        '{"kind": "nightly"}',
        "--tz",
        "Europe/Berlin",
        "--max-runs",
        "30",
        "--misfire",
        "skip",
        "--overlap",
        "queue",
        "--retry",
        "2",
    )
    assert added.code == 0, added.err
    assert "nightly" in added.out and "Europe/Berlin" in added.out and "queue" in added.out
    await cli("cron", "add", "every-minute", "@every 1m", "http://127.0.0.1:9/tick")

    listed = await cli("cron", "list")
    lines = listed.out.splitlines()
    assert lines[0].split() == ["NAME", "SCHEDULE", "ZONE", "STATE", "NEXT", "LAST", "RUNS"]
    assert [line.split()[0] for line in lines[1:]] == ["every-minute", "nightly"]
    names = await cli("cron", "list", "--names")
    assert names.out.split() == ["every-minute", "nightly"]

    view = await cli("cron", "view", "nightly", "--json")
    body = json.loads(view.out)
    assert body["httpRequest"]["headers"] == {"X-Team": "ops"}
    assert body["httpRequest"]["data"] == {"kind": "nightly"}
    assert (body["config"]["retry"], body["maxRuns"], body["misfirePolicy"]) == (2, 30, "skip")
    assert len(body["next"]) == 5 and body["next"][0]["local"].endswith(":30:00+01:00")
    text = await cli("cron", "view", "nightly")
    assert "next runs:" in text.out and "task template:" in text.out

    paused = await cli("cron", "pause", "nightly")
    assert paused.code == 0 and "PAUSED" in paused.out
    resumed = await cli("cron", "resume", "nightly")
    assert resumed.code == 0 and "ACTIVE" in resumed.out

    unconfirmed = await cli("cron", "delete", "nightly")  # stdin is not a terminal
    assert unconfirmed.code == 2 and "not deleted" in unconfirmed.err
    deleted = await cli("cron", "delete", "nightly", "-f")
    assert deleted.code == 0 and "nightly: done" in deleted.out
    gone = await cli("cron", "view", "nightly")
    assert gone.code == 1 and "404" in gone.err


async def test_cron_add_refusals_name_the_field(cli: Cli, owner: dict[str, str]) -> None:
    bad = await cli("cron", "add", "broken", "61 * * * *", "http://127.0.0.1:9/x")
    assert bad.code == 1
    assert "schedule: Invalid cron expression '61 * * * *'" in bad.err
    zone = await cli("cron", "add", "broken", "@daily", "http://127.0.0.1:9/x", "--tz", "Nowhere")
    assert zone.code == 1 and "timezone: Unknown time zone 'Nowhere'" in zone.err


async def test_cron_workflow_creates_a_schedule_that_starts_runs(
    cli: Cli, owner: dict[str, str], tmp_path: Path
) -> None:
    workflow = {
        "name": "etl",
        "steps": [
            {
                "id": "export",
                "httpRequest": {"url": "https://example.com/export", "method": "POST"},
            },
            {
                "id": "load",
                "dependsOn": ["export"],
                "httpRequest": {"url": "https://example.com/load", "method": "POST"},
            },
        ],
    }
    definition = tmp_path / "etl.json"
    definition.write_text(json.dumps(workflow))
    added = await cli("cron", "workflow", "nightly-etl", "0 2 * * *", str(definition), "--json")
    assert added.code == 0, added.err
    body = json.loads(added.out)
    assert (body["target"], body["runs"], body["lastRunId"]) == ("workflow", 0, None)
    assert [step["id"] for step in body["workflow"]["steps"]] == ["export", "load"]
    text = await cli("cron", "view", "nightly-etl")
    assert "workflow:" in text.out and "task template:" not in text.out
    runs = await cli("cron", "runs", "nightly-etl")
    assert runs.code == 0 and runs.out.strip() == "no runs"

    workflow["steps"][0]["dependsOn"] = ["load"]
    definition.write_text(json.dumps(workflow))
    cycle = await cli("cron", "workflow", "broken", "@daily", str(definition))
    assert cycle.code == 1
    assert "workflow.steps.0.dependsOn: step 'export' is part of a dependency cycle" in cycle.err
