"""Whole process: a server that cannot serve exits, with a non-zero code, so a
supervisor (systemd, Docker's restart policy) notices and restarts it."""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.process import ServerProcess, free_port


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
    first = ServerProcess(tmp_path, CIPHER_KEY=secrets.token_urlsafe(32)).start()
    register_delayed_task(first, 2000)
    first.kill()

    second = ServerProcess(tmp_path, CIPHER_KEY=secrets.token_urlsafe(32))
    started = time.monotonic()
    try:
        second.start()  # it may already be gone when the task falls due during start-up
    except RuntimeError:
        pass
    assert second.process is not None
    code = second.process.wait(timeout=20)
    assert code != 0
    assert time.monotonic() - started < 20
    # the key check stops start-up with a message naming the setting
    assert "CIPHER_KEY" in second.log.read_text()


def test_a_background_loop_that_dies_at_run_time_ends_the_process_with_code_1(
    tmp_path: Path,
) -> None:
    """A fault no retry can mend, met while serving (here the task table dropped from
    under the server, as a mistaken shell session would): the loop that meets it dies,
    the whole process stops and exits 1 instead of staying up without its loops."""
    server = ServerProcess(tmp_path).start()
    database = sqlite3.connect(tmp_path / "tasks.db", timeout=30)
    try:
        database.execute("DROP TABLE task")
        database.commit()
    finally:
        database.close()
    assert server.process is not None
    assert server.process.wait(timeout=30) == 1
    log = server.log.read_text()
    assert "stopped; shutting down" in log
    assert "exiting: no such table: task" in log


def test_a_server_stopped_by_sigterm_exits_0(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    assert server.terminate(timeout=20) == 0


def serve_once(server: ServerProcess, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` with ``server``'s settings (plus ``env``) until it exits by itself."""
    return subprocess.run(
        [sys.executable, "-m", "tasks_server", "serve"],
        cwd=server.directory,
        env={**server.env, "PORT": str(free_port()), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_serve_with_a_file_that_is_not_a_database_says_so(tmp_path: Path) -> None:
    database = tmp_path / "tasks.db"
    database.write_bytes(b"this is not an SQLite database" * 100)
    result = serve_once(ServerProcess(tmp_path))
    assert result.returncode == 2
    assert f"PATH_SQLITE='{database}': is not an SQLite database file" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_with_a_missing_tls_certificate_says_which_setting(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    result = serve_once(ServerProcess(tmp_path), PATH_TLS_CERT=missing, PATH_TLS_KEY=missing)
    assert result.returncode == 2
    assert f"PATH_TLS_CERT='{missing}': no such file" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_second_server_on_the_same_database_is_refused(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as first:
        result = serve_once(first)
        assert result.returncode == 2
        assert "another tasks-server already serves this database" in result.stderr
        assert first.process is not None and first.process.poll() is None
