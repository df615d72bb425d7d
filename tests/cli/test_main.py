"""The CLI as a user runs it: ``tasks-server owner …`` and ``task …`` in subprocesses
against a real server process on a free port, and a real target on the loop."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks_server.cli.main import parser
from tests.support.process import ServerProcess, free_port
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until

ADMIN_KEY = "admin-key-for-cli-tests-0123456789"
_SCRIPT = Path(sys.executable).with_name("tasks-server")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "tasks_server"]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


class Cli:
    """Runs ``tasks-server ARGS`` with TASKS_* variables pointing at one server."""

    def __init__(self, url: str) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TASKS_")}
        self.env.pop("ADMIN_KEY", None)
        self.env["TASKS_URL"] = url

    def login(self, owner_id: str, key: str) -> None:
        self.env.update(TASKS_OWNER_ID=owner_id, TASKS_KEY=key)

    async def __call__(self, *args: str, **env: str) -> Run:
        process = await asyncio.create_subprocess_exec(
            *COMMAND,
            *args,
            env={**self.env, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode is not None
        return Run(process.returncode, out.decode(), err.decode())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        tmp_path, ADMIN_KEY=ADMIN_KEY, LOG="1", LOG_FORMAT="json", LOG_LEVEL="INFO"
    ) as process:
        yield process


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as target:
        target.route("/hook", Reply(200, b"hello"))
        yield target


@pytest.fixture
async def cli(server: ServerProcess) -> Cli:
    return Cli(server.url)


@pytest.fixture
async def owner(cli: Cli) -> dict[str, str]:
    # the server has an ADMIN_KEY, so registration needs it (OWNER_REGISTRATION=admin)
    refused = await cli("owner", "create", "cli-owner", "--json")
    assert refused.code == 1 and "401" in refused.err
    created = await cli("owner", "create", "cli-owner", "--json", TASKS_ADMIN_KEY=ADMIN_KEY)
    assert created.code == 0, created.err
    body = created.json()
    assert isinstance(body, dict)
    cli.login(body["id"], body["key"])
    return body


def _walk(command: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")
        else:
            yield path, action


def test_help_explains_every_flag_and_argument() -> None:
    missing = [
        f"{path}: {action.dest}"
        for path, action in _walk(parser(), "tasks-server")
        if not action.help and action.dest != "help"
    ]
    assert missing == []


async def test_help_runs_and_names_the_client_commands() -> None:
    run = await Cli("http://127.0.0.1:9")("--help")
    assert run.code == 0
    for command in ("serve", "migrate", "check-config", "owner", "task"):
        assert command in run.out
    task_help = await Cli("http://127.0.0.1:9")("task", "add", "--help")
    assert "exit codes" in task_help.out and "--retry" in task_help.out


async def test_owner_create_view_list_delete(cli: Cli, owner: dict[str, str]) -> None:
    view = await cli("owner", "view", "cli-owner")
    assert view.code == 0 and "cli-owner" in view.out and owner["id"] in view.out

    listed = await cli("owner", "list", "--json", TASKS_ADMIN_KEY=ADMIN_KEY)
    assert listed.code == 0, listed.err
    assert [o["name"] for o in listed.json()] == ["cli-owner"]  # type: ignore[attr-defined]
    table = await cli("owner", "list", "--admin-key", ADMIN_KEY)
    header = table.out.splitlines()[0].split()
    assert header == ["ID", "NAME", "CREATED", "TASKS", "LIMIT", "DISABLED", "BUDGET"]
    assert owner["key"] not in table.out

    assert (await cli("owner", "delete", "cli-owner")).code == 0
    gone = await cli("owner", "view", "cli-owner")
    assert gone.code == 1 and "refused" in gone.err


async def test_owner_create_export_prints_shell_lines(cli: Cli) -> None:
    run = await cli("owner", "create", "export-owner", "--export", TASKS_ADMIN_KEY=ADMIN_KEY)
    assert run.code == 0
    assert run.out.startswith("export TASKS_OWNER_ID=") and " TASKS_KEY=" in run.out


async def test_task_add_run_view_and_list(
    cli: Cli, owner: dict[str, str], target: TargetServer
) -> None:
    add = await cli(
        "task", "add", target.url("/hook"), "-X", "POST", "-d", "payload",
        "-H", "X-Trace: abc", "--delay", "600000", "--metadata", "kind=test", "--json",
    )  # fmt: skip
    assert add.code == 0, add.err
    task = add.json()
    assert isinstance(task, dict) and task["state"] == "RUNNING"
    task_id = task["id"]

    listed = await cli("task", "list", "--state", "running")
    assert listed.code == 0 and task_id in listed.out and "RUNNING" in listed.out
    assert (await cli("task", "run", task_id)).code == 0
    await wait_until(lambda: target.arrivals_at("/hook"), timeout=10)
    arrival = target.arrivals_at("/hook")[0]
    assert arrival.body == b"payload" and arrival.header("x-trace") == "abc"

    async def succeeded() -> bool:
        view = await cli("task", "view", task_id, "--json")
        return view.json()["state"] == "SUCCESS"  # type: ignore[index,no-any-return]

    await wait_until(succeeded, timeout=10)
    view = await cli("task", "view", task_id, "--attempts", "--config")
    assert view.code == 0
    assert "SUCCESS" in view.out and "ATTEMPT" in view.out and '"method": "POST"' in view.out


async def test_task_pause_resume_revoke_delete(cli: Cli, owner: dict[str, str]) -> None:
    add = await cli("task", "add", "http://127.0.0.1:9/never", "--delay", "600000", "--json")
    task_id = add.json()["id"]  # type: ignore[index]

    assert (await cli("task", "pause", task_id)).out.strip() == f"{task_id}: done"
    paused = await cli("task", "view", task_id)
    assert "PAUSED" in paused.out
    resumed = await cli("task", "resume", task_id)
    assert resumed.code == 0 and "RUNNING" in resumed.out
    assert (await cli("task", "revoke", task_id)).code == 0
    again = await cli("task", "revoke", task_id)
    assert again.code == 1 and "422" in again.err
    assert (await cli("task", "delete", task_id)).code == 0
    missing = await cli("task", "view", task_id)
    assert missing.code == 1 and "404" in missing.err


async def test_task_add_from_body_file_with_flag_overrides(
    cli: Cli, owner: dict[str, str], tmp_path: Path
) -> None:
    body = {
        "httpRequest": {"url": "http://127.0.0.1:9/a", "method": "PUT"},
        "config": {"retry": 2, "executionDelay": 600000},
    }
    path = tmp_path / "body.json"
    path.write_text(json.dumps(body))
    add = await cli("task", "add", "http://127.0.0.1:9/b", "--body-file", str(path), "--json")
    assert add.code == 0, add.err
    config = await cli("task", "view", add.json()["id"], "--config", "--json")  # type: ignore[index]
    stored = config.json()["config"]  # type: ignore[index]
    assert stored["httpRequest"] == {"url": "http://127.0.0.1:9/b", "method": "PUT"}
    assert stored["config"]["retry"] == 2


async def test_validation_errors_name_the_field(cli: Cli, owner: dict[str, str]) -> None:
    run = await cli("task", "add", "ftp://127.0.0.1/x")
    assert run.code == 1
    assert "httpRequest.url: URL must start with http:// or https://" in run.err


async def test_exit_codes_for_missing_credentials_and_unreachable_server(cli: Cli) -> None:
    no_owner = await cli("task", "list")
    assert no_owner.code == 2 and "TASKS_OWNER_ID" in no_owner.err
    no_admin = await cli("owner", "list")
    assert no_admin.code == 2 and "ADMIN_KEY" in no_admin.err
    wrong_admin = await cli("owner", "list", "--admin-key", "not-the-admin-key-at-all")
    assert wrong_admin.code == 1 and "401" in wrong_admin.err
    closed = f"http://127.0.0.1:{free_port()}"
    unreachable = await cli("owner", "create", "nobody-home", "--server", closed)
    assert unreachable.code == 3 and "cannot reach" in unreachable.err
    bad_url = await cli("owner", "create", "bad-url", "--server", "localhost:1")
    assert bad_url.code == 2 and "TASKS_URL" in bad_url.err


async def test_server_log_is_json_lines_without_secrets(
    cli: Cli, owner: dict[str, str], server: ServerProcess
) -> None:
    await cli("task", "add", "http://user:url-secret@127.0.0.1:9/x", "--delay", "600000")
    await cli("owner", "list", TASKS_ADMIN_KEY=ADMIN_KEY)
    assert server.terminate() == 0
    lines = server.log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [e for e in entries if e["logger"] == "tasks_server.access"]
    assert {e["path"] for e in access} >= {"/v1/owners/register", "/v1/queues/register"}
    text = server.log.read_text()
    for secret in (owner["key"], ADMIN_KEY, "url-secret"):
        assert secret not in text


async def test_the_administrator_disables_rotates_and_removes_owners(
    cli: Cli, owner: dict[str, str]
) -> None:
    admin = {"TASKS_ADMIN_KEY": ADMIN_KEY}
    assert (await cli("owner", "view", "cli-owner")).code == 0
    disabled = await cli("owner", "disable", owner["id"], "--json", **admin)
    assert disabled.code == 0, disabled.err
    assert disabled.json() == {**disabled.json(), "id": owner["id"], "disabled": True}
    refused = await cli("owner", "view", "cli-owner")
    assert refused.code == 1 and "403" in refused.err
    assert (await cli("owner", "enable", owner["id"], **admin)).code == 0
    assert (await cli("owner", "view", "cli-owner")).code == 0

    limits = await cli("owner", "limits", owner["id"], "--request-budget", "120", "--json", **admin)
    assert limits.code == 0, limits.err
    assert limits.json() == {**limits.json(), "requestBudget": 120}

    rotated = await cli("owner", "rotate-key", owner["id"], "--json", **admin)
    assert rotated.code == 0, rotated.err
    new = rotated.json()
    assert isinstance(new, dict) and new["id"] == owner["id"] and new["key"] != owner["key"]
    old_key = await cli("owner", "view", "cli-owner")
    assert old_key.code == 1 and "401" in old_key.err
    cli.login(owner["id"], new["key"])
    assert (await cli("owner", "view", "cli-owner")).code == 0

    removed = await cli("owner", "remove", owner["id"], **admin)
    assert removed.code == 0 and f"{owner['id']}: done" in removed.out
    listed = await cli("owner", "list", "--json", **admin)
    assert listed.json() == []
