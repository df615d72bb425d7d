"""Whole process: a server that cannot serve exits, with a non-zero code, so a
supervisor (systemd, Docker's restart policy) notices and restarts it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.process import ServerProcess


def register_delayed_task(server: ServerProcess, delay_ms: int) -> None:
    with httpx.Client(base_url=server.url) as http:
        owner = http.post("/v1/owners/register", json={"name": "key-test"}).json()
        headers = {"Authorization": f"Bearer {owner['key']}", "X-Tasks-Owner-Id": owner["id"]}
        body = {
            "httpRequest": {"url": "http://127.0.0.1:9/hook", "method": "GET"},
            "config": {"executionDelay": delay_ms},
        }
        response = http.post("/v1/queues/register", json=body, headers=headers)
        assert response.status_code == 201, response.text


def test_a_wrong_cipher_key_ends_the_process_with_a_non_zero_code(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path, CIPHER_KEY="the-right-key").start()
    register_delayed_task(first, 2000)
    first.kill()

    second = ServerProcess(tmp_path, CIPHER_KEY="a-wrong-key")
    started = time.monotonic()
    try:
        second.start()  # it may already be gone when the task falls due during start-up
    except RuntimeError:
        pass
    assert second.process is not None
    code = second.process.wait(timeout=20)
    assert code != 0
    assert time.monotonic() - started < 20
    assert "shutting down" in second.log.read_text() or "startup failed" in second.log.read_text()


def test_a_server_stopped_by_sigterm_exits_0(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    assert server.terminate(timeout=20) == 0


def test_serve_with_a_file_that_is_not_a_database_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "tasks.db").write_bytes(b"this is not an SQLite database" * 100)
    server = ServerProcess(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "tasks_server", "serve"],
        cwd=tmp_path,
        env=server.env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
