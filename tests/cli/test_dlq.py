"""``tasks-server dlq …`` as a user runs it, in subprocesses against a real server whose
tasks fail at a real target."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.test_main import Cli
from tests.support.process import ServerProcess
from tests.support.targets import Reply, TargetServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path, EGRESS_ALLOW="127.0.0.1/32") as process:
        yield process


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as target:
        target.route("/fail", Reply(500, b"no"))
        target.route("/busy", Reply(503, b"later"))
        yield target


@pytest.fixture
async def cli(server: ServerProcess) -> Cli:
    return Cli(server.url)


@pytest.fixture
async def owner(cli: Cli) -> dict[str, str]:
    created = await cli("owner", "create", "dlq-owner", "--json")
    assert created.code == 0, created.err
    body: dict[str, str] = created.json()  # type: ignore[assignment]
    cli.login(body["id"], body["key"])
    return body


async def failed_task(server: ServerProcess, owner: dict[str, str], url: str) -> str:
    headers = {"Authorization": f"Bearer {owner['key']}", "X-Tasks-Owner-Id": owner["id"]}
    body: dict[str, Any] = {
        "httpRequest": {"url": url, "method": "GET"},
        "config": {"executionDelay": 0},
    }
    async with httpx.AsyncClient(base_url=server.url, timeout=40) as client:
        answer = await client.post("/v1/queues/register?wait=30", json=body, headers=headers)
    assert answer.json()["state"] == "ERROR", answer.text
    task_id: str = answer.json()["id"]
    return task_id


async def test_list_replay_and_delete(
    cli: Cli, owner: dict[str, str], server: ServerProcess, target: TargetServer
) -> None:
    fail = await failed_task(server, owner, target.url("/fail"))
    busy = [await failed_task(server, owner, target.url("/busy")) for _ in range(2)]

    listed = await cli("dlq", "list")
    assert listed.code == 0, listed.err
    assert fail in listed.out and all(task_id in listed.out for task_id in busy)
    only_busy = await cli("dlq", "list", "--status", "503", "--json")
    assert sorted(item["id"] for item in only_busy.json()) == sorted(busy)  # type: ignore[union-attr]

    target.route("/fail", Reply(200, b"yes"))
    replayed = await cli("dlq", "replay", fail)
    assert replayed.code == 0, replayed.err
    assert f"{fail}: replayed" in replayed.out

    refused = await cli("dlq", "replay")
    assert refused.code != 0 and "--all" in refused.err
    target.route("/busy", Reply(200, b"yes"))
    many = await cli("dlq", "replay", "--status", "503", "--rate", "100")
    assert many.code == 0 and "replayed 2" in many.out, many.err

    missing = await cli("dlq", "delete", fail)  # replayed: no longer a dead letter
    assert missing.code != 0 and "refused" in missing.err
    gone = await failed_task(server, owner, target.url("/unknown"))  # the target says 404
    other = await failed_task(server, owner, target.url("/unknown"))
    one = await cli("dlq", "delete", gone)
    assert one.code == 0 and f"{gone}: deleted" in one.out, one.err
    unconfirmed = await cli("dlq", "delete", "--all")
    assert unconfirmed.code != 0
    everything = await cli("dlq", "delete", "--all", "-f")
    assert everything.code == 0 and "deleted 1" in everything.out, everything.err
    assert other not in (await cli("dlq", "list")).out
