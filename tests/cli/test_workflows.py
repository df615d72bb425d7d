"""``tasks-server workflow …`` as a user runs it, in subprocesses against a real server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tasks_server.cli.workflows import tree
from tests.cli.test_main import Cli
from tests.support.process import ServerProcess
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path) as process:
        yield process


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as found:
        yield found


@pytest.fixture
async def cli(server: ServerProcess) -> Cli:
    cli = Cli(server.url)
    created = await cli("owner", "create", "flow-owner", "--json")
    assert created.code == 0, created.err
    body = created.json()
    assert isinstance(body, dict)
    cli.login(body["id"], body["key"])
    return cli


async def test_workflow_run_view_list_retry_cancel(
    cli: Cli, target: TargetServer, tmp_path: Path
) -> None:
    target.route("/a", Reply(200))
    target.route("/b", Reply(500, b"no"))
    definition = {
        "name": "nightly",
        "steps": [
            {"id": "a", "httpRequest": {"url": target.url("/a"), "method": "POST"}},
            {
                "id": "b",
                "dependsOn": ["a"],
                "httpRequest": {"url": target.url("/b"), "method": "POST"},
            },
            {
                "id": "c",
                "dependsOn": ["a", "b"],
                "httpRequest": {"url": target.url("/a"), "method": "POST"},
            },
        ],
    }
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(definition))
    ran = await cli("workflow", "run", str(path), "--wait", "10")
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert lines[0].startswith("nightly ") and "ERROR" in lines[0]
    assert lines[1] == "└─ ✔ a  (SUCCESS; 1 attempt; HTTP 200)"
    assert lines[2] == "   └─ ✘ b  (ERROR; 1 attempt; HTTP 500)"
    assert lines[3].strip() == "error: the call answered 500"
    assert lines[4] == "      └─ … c  (WAITING; after a, b)"
    run_id = lines[0].split()[1].rstrip(":")
    listed = await cli("workflow", "list", "--json")
    assert [r["id"] for r in listed.json()] == [run_id]  # type: ignore[union-attr]
    target.route("/b", Reply(200))
    retried = await cli("workflow", "retry", run_id)
    assert retried.code == 0 and "RUNNING" in retried.out.splitlines()[0]
    viewed = await cli("workflow", "view", run_id, "--json")
    assert viewed.json()["id"] == run_id  # type: ignore[index]
    target.route("/hang", Reply(hang=True))
    hanging = {
        "name": "stuck",
        "steps": [{"id": "h", "httpRequest": {"url": target.url("/hang"), "method": "GET"}}],
    }
    path.write_text(json.dumps(hanging))
    started = await cli("workflow", "run", str(path), "--json")
    assert started.code == 0, started.err
    stuck = started.json()
    await wait_until(lambda: len(target.arrivals_at("/hang")) == 1, message="the hanging call")
    cancelled = await cli("workflow", "cancel", stuck["id"])  # type: ignore[index]
    assert cancelled.code == 0, cancelled.err
    assert (
        cancelled.out.splitlines()[1] == "└─ ■ h  (CANCELLED)"
        or "CANCELLED" in cancelled.out.splitlines()[0]
    )
    again = await cli("workflow", "cancel", stuck["id"])  # type: ignore[index]
    assert again.code == 1 and "CANCELLED" in again.err
    target.release()
    missing = await cli("workflow", "view", "0" * 24)
    assert missing.code == 1


def test_tree_draws_chains_downwards_and_names_extra_dependencies() -> None:
    run = {
        "steps": [
            {
                "id": "a",
                "dependsOn": [],
                "state": "SUCCESS",
                "attempts": 1,
                "statusCode": 200,
                "error": None,
            },
            {
                "id": "b",
                "dependsOn": ["a"],
                "state": "RUNNING",
                "attempts": 1,
                "statusCode": 0,
                "error": None,
            },
            {
                "id": "c",
                "dependsOn": ["a"],
                "state": "SKIPPED",
                "attempts": 0,
                "statusCode": 0,
                "error": None,
            },
            {
                "id": "d",
                "dependsOn": ["c", "b"],
                "state": "WAITING",
                "attempts": 0,
                "statusCode": 0,
                "error": None,
            },
        ]
    }
    assert tree(run) == [
        "└─ ✔ a  (SUCCESS; 1 attempt; HTTP 200)",
        "   ├─ ▶ b  (RUNNING; 1 attempt)",
        "   │  └─ … d  (WAITING; after c, b)",
        "   └─ ↷ c  (SKIPPED)",
    ]
