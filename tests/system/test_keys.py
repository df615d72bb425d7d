"""Keys that protect, with the real server in a subprocess: the generated key file, the
key check that stops a wrong key at start-up, and re-sealing with ``rotate-key``."""

from __future__ import annotations

import os
import secrets
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tasks_server.cipher_key import key_file_path
from tests.support.process import ServerProcess
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until

PLANTED = {
    "basic": "planted-basic-password",
    "header": "planted-header-value",
    "query": "planted-query-value",
    "body": "planted-body-text",
    "metadata": "planted-metadata-value",
    "proxy": "planted-proxy-password",
    "response-header": "planted-response-header",
    "response-body": "planted-response-body",
}


def _serve(directory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``serve`` run to its end: for start-ups that must fail."""
    return subprocess.run(
        [sys.executable, "-m", "tasks_server", "serve"],
        cwd=directory,
        env={**os.environ, "PATH_SQLITE": str(directory / "tasks.db"), "PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _cli(directory: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tasks_server", *args],
        cwd=directory,
        env={**os.environ, "PATH_SQLITE": str(directory / "tasks.db"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _plant(server: ServerProcess, target: TargetServer) -> dict[str, Any]:
    """An owner and a task carrying every planted secret, run once against ``target``."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        owner = (await http.post("/v1/owners/register", json={"name": "planter"})).json()
        headers = {"Authorization": f"Bearer {owner['key']}", "X-Tasks-Owner-Id": owner["id"]}
        body = {
            "httpRequest": {
                "url": target.url(f"/hook?token={PLANTED['query']}"),
                "method": "POST",
                "headers": {"X-Token": PLANTED["header"]},
                "authBasic": {"username": "user", "password": PLANTED["basic"]},
                "data": PLANTED["body"],
            },
            "config": {"executionDelay": 0, "retry": 0},
            "metadata": {"note": PLANTED["metadata"]},
        }
        created = await http.post("/v1/queues/register", json=body, headers=headers)
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]

        async def finished() -> bool:
            task = (await http.get(f"/v1/queues/{task_id}", headers=headers)).json()
            return bool(task["state"] != "RUNNING")

        await wait_until(finished, timeout=15, message="the planted task ran")
        attempts = (await http.get(f"/v1/queues/{task_id}/attempts", headers=headers)).json()
        assert attempts[0]["statusCode"] == 200
    return {"headers": headers, "task_id": task_id}


def _hits(*files: Path) -> list[tuple[str, str]]:
    found = []
    for path in files:
        raw = path.read_bytes()
        found += [(path.name, secret) for secret in PLANTED.values() if secret.encode() in raw]
    return found


async def test_a_generated_key_file_keeps_every_planted_secret_unreadable(
    tmp_path: Path,
) -> None:
    database = tmp_path / "tasks.db"
    async with TargetServer() as target:
        target.route(
            "/hook",
            Reply(
                200, PLANTED["response-body"].encode(), (("X-Echo", PLANTED["response-header"]),)
            ),
        )
        server = ServerProcess(tmp_path, CIPHER_KEY="", EGRESS_ALLOW="127.0.0.1/32")
        with server:
            key_file = key_file_path(database)
            assert key_file.is_file()
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
            assert f"generated a random key into {key_file}" in server.log.read_text()
            await _plant(server, target)
            snapshot = tmp_path / "snapshot.db"
            backup = _cli(tmp_path, "backup", "--to", str(snapshot), CIPHER_KEY="")
            assert backup.returncode == 0, backup.stderr
            wal = tmp_path / "tasks.db-wal"
            assert wal.is_file() and wal.stat().st_size > 0
            assert server.process is not None
            server.process.send_signal(signal.SIGKILL)  # keep the -wal as it is
            server.process.wait(10)
    assert _hits(database, wal, snapshot) == []

    # without the key file the database cannot be opened
    key_file.rename(tmp_path / "elsewhere.key")
    refused = _serve(tmp_path, CIPHER_KEY="")
    assert refused.returncode != 0
    assert "CIPHER_KEY" in refused.stderr and "Traceback" not in refused.stderr
    refused = _serve(tmp_path, CIPHER_KEY=secrets.token_urlsafe(32))
    assert refused.returncode != 0 and "CIPHER_KEY" in refused.stderr


async def test_a_wrong_cipher_key_fails_start_up_with_a_clear_message(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.post("/v1/owners/register", json={"name": "keyed"})).is_success
        assert server.terminate() == 0
    wrong = _serve(tmp_path, CIPHER_KEY=secrets.token_urlsafe(32))
    assert wrong.returncode != 0
    assert "CIPHER_KEY" in wrong.stderr and "not the key this database" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    for weak in ("change-me", "short-key"):  # an example value, and one too short
        refused = _serve(tmp_path, CIPHER_KEY=weak)
        assert refused.returncode == 2 and "CIPHER_KEY" in refused.stderr
        assert weak not in refused.stderr  # the message never echoes the key


async def test_a_wrong_cipher_key_fails_start_up_on_postgresql(
    tmp_path: Path, database_url: str
) -> None:
    with ServerProcess(tmp_path, DATABASE_URL=database_url) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.post("/v1/owners/register", json={"name": "keyed"})).is_success
        assert server.terminate() == 0
    wrong = _serve(tmp_path, DATABASE_URL=database_url, CIPHER_KEY=secrets.token_urlsafe(32))
    assert wrong.returncode != 0
    assert "CIPHER_KEY" in wrong.stderr and "not the key this database" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    # no key file can serve nodes that share the database: a real key is required
    for weak in ("", "change-me", "short-key"):
        refused = _serve(tmp_path, DATABASE_URL=database_url, CIPHER_KEY=weak)
        assert refused.returncode == 2 and "CIPHER_KEY" in refused.stderr
        assert "same on every node" in refused.stderr and "Traceback" not in refused.stderr
        if weak:
            assert weak not in refused.stderr


async def test_rotate_key_reseals_everything(tmp_path: Path) -> None:
    database = tmp_path / "tasks.db"
    async with TargetServer() as target:
        target.route("/hook", Reply(200, PLANTED["response-body"].encode()))
        server = ServerProcess(tmp_path, CIPHER_KEY="", EGRESS_ALLOW="127.0.0.1/32")
        with server:
            planted = await _plant(server, target)
            assert server.terminate() == 0
        old_key = key_file_path(database).read_text().strip()

        busy = server.start()  # a running server holds the database: rotation waits
        refused = _cli(tmp_path, "rotate-key", CIPHER_KEY="")
        assert refused.returncode == 1 and "in use" in refused.stderr
        assert busy.terminate() == 0

        rotated = _cli(tmp_path, "rotate-key", CIPHER_KEY="")
        assert rotated.returncode == 0, rotated.stderr
        assert "re-sealed" in rotated.stdout
        new_key = key_file_path(database).read_text().strip()
        assert new_key != old_key
        assert stat.S_IMODE(key_file_path(database).stat().st_mode) == 0o600

        stale = _serve(tmp_path, CIPHER_KEY=old_key)
        assert stale.returncode != 0 and "CIPHER_KEY" in stale.stderr
        with server:  # starts it again, on the new key file
            async with httpx.AsyncClient(base_url=server.url) as http:
                path = f"/v1/queues/{planted['task_id']}"
                config = await http.get(f"{path}/config?reveal=true", headers=planted["headers"])
                attempts = await http.get(f"{path}/attempts", headers=planted["headers"])
        assert PLANTED["basic"] in config.text and PLANTED["body"] in config.text
        assert attempts.json()[0]["statusCode"] == 200


async def test_rotate_key_reseals_everything_on_postgresql(
    tmp_path: Path, database_url: str
) -> None:
    old_key, new_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    key_file = tmp_path / "new.key"
    key_file.write_text(new_key + "\n")
    shared = {"DATABASE_URL": database_url}
    async with TargetServer() as target:
        target.route("/hook", Reply(200, PLANTED["response-body"].encode()))
        server = ServerProcess(tmp_path, CIPHER_KEY=old_key, **shared)
        with server:
            planted = await _plant(server, target)
            # a node on the database: rotating now would leave it sealing with the old key
            busy = _cli(tmp_path, "rotate-key", "--new-key-file", str(key_file), **shared)
            assert busy.returncode == 1 and "in use" in busy.stderr, busy.stderr
            assert server.terminate() == 0

        # nodes read their key from CIPHER_KEY: the new one must be given, not generated
        unnamed = _cli(tmp_path, "rotate-key", CIPHER_KEY=old_key, **shared)
        assert unnamed.returncode == 2 and "--new-key-file" in unnamed.stderr
        wrong = _cli(
            tmp_path, "rotate-key", "--new-key-file", str(key_file), CIPHER_KEY=new_key, **shared
        )
        assert wrong.returncode == 2 and "not the key this database" in wrong.stderr
        rotated = _cli(
            tmp_path, "rotate-key", "--new-key-file", str(key_file), CIPHER_KEY=old_key, **shared
        )
        assert rotated.returncode == 0, rotated.stderr
        assert "re-sealed" in rotated.stdout and "every node" in rotated.stdout
        assert "Traceback" not in rotated.stderr + wrong.stderr + unnamed.stderr

        stale = _serve(tmp_path, CIPHER_KEY=old_key, **shared)
        assert stale.returncode != 0 and "not the key this database" in stale.stderr
        server.env["CIPHER_KEY"] = new_key
        with server:
            async with httpx.AsyncClient(base_url=server.url) as http:
                path = f"/v1/queues/{planted['task_id']}"
                config = await http.get(f"{path}/config?reveal=true", headers=planted["headers"])
                attempts = await http.get(f"{path}/attempts", headers=planted["headers"])
    assert PLANTED["basic"] in config.text and PLANTED["body"] in config.text
    assert PLANTED["metadata"] in config.text and PLANTED["header"] in config.text
    assert attempts.json()[0]["statusCode"] == 200
