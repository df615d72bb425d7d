"""Log lines: one per request and per attempt, plain or JSON, with the task id and attempt
number as fields, and never a secret (owner keys, Authorization headers, task passwords,
URL credentials, operator keys)."""

from __future__ import annotations

import io
import json
import logging
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks_server.cli import main as cli
from tasks_server.config import load
from tasks_server.log import JsonFormatter
from tasks_server.models import Call, Outcome
from tests.conftest import ServerFactory, client_for, register_owner, register_task
from tests.support.clock import FakeClock
from tests.support.process import ServerProcess
from tests.support.recording import RecordingDispatcher
from tests.support.waiting import wait_until

SECRETS = {
    "basic": "basic-password-secret",
    "header": "header-bearer-secret",
    "url": "url-password-secret",
    "query": "query-value-secret",
    "proxy": "proxy-password-secret",
    "cipher": "cipher-key-secret",
}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything logged at INFO and above, through the JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def fail_then_succeed() -> RecordingDispatcher:
    def script(call: Call) -> Outcome:
        first = call.headers[1] == ("X-Tasks-Attempt", "1")
        return Outcome(status=503 if first else 200, body=b"target body", total_ms=3.0)

    return RecordingDispatcher(script)


async def test_json_lines_have_fields_and_no_secrets(
    make_server: ServerFactory, clock: FakeClock, captured: io.StringIO
) -> None:
    server = await make_server(
        fail_then_succeed(), log=True, cipher_key=SECRETS["cipher"], egress_proxies="127.0.0.1"
    )
    async with client_for(server) as client:
        owner = await register_owner(client, "logging-owner")
        request = {
            "url": f"http://user:{SECRETS['url']}@127.0.0.1:9/hook",
            "method": "POST",
            "headers": {"Authorization": f"Bearer {SECRETS['header']}"},
            "query": {"token": SECRETS["query"]},
            "authBasic": {"username": "user", "password": SECRETS["basic"]},
        }
        config = {
            "executionDelay": 1000,
            "retry": 1,
            "retryInterval": 1000,
            "proxy": {"protocol": "http", "host": "127.0.0.1", "port": 3128},
            "proxyAuthBasic": {"username": "p", "password": SECRETS["proxy"]},
        }
        response = await register_task(client, owner, request, config=config)
        assert response.status_code == 201, response.text
        task_id = response.json()["id"]
        await client.get(f"/v1/queues/{task_id}?pretty", headers=owner.headers)
        clock.advance(1.0)
        await wait_until(lambda: server.scheduler.stats.retried == 1, message="first attempt")
        clock.advance(2.0)
        await wait_until(lambda: server.scheduler.stats.succeeded == 1, message="the retry")

    entries = [json.loads(line) for line in captured.getvalue().splitlines()]
    access = [e for e in entries if e["logger"] == "tasks_server.access"]
    assert {(e["method"], e["path"], e["status"]) for e in access} >= {
        ("POST", "/v1/owners/register", 201),
        ("POST", "/v1/queues/register", 201),
        ("GET", f"/v1/queues/{task_id}", 200),
    }
    assert all(isinstance(e["duration_ms"], float) for e in access)
    attempts = [e for e in entries if e["logger"] == "tasks_server.tasks"]
    assert [(e["task_id"], e["attempt"], e["state"], e["status"]) for e in attempts] == [
        (task_id, 1, "RUNNING", 503),
        (task_id, 2, "SUCCESS", 200),
    ]
    text = captured.getvalue()
    for secret in (*SECRETS.values(), owner.key):
        assert secret not in text


async def test_plain_lines_name_the_task_and_attempt(
    make_server: ServerFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server(fail_then_succeed(), log=True)
    caplog.set_level(logging.INFO)
    async with client_for(server) as client:
        owner = await register_owner(client, "plain-owner")
        task = (await register_task(client, owner, config={"executionDelay": 1000})).json()
        clock.advance(1.0)
        await wait_until(lambda: server.scheduler.stats.failed == 1, message="the attempt")
    messages = [r.getMessage() for r in caplog.records if r.name == "tasks_server.tasks"]
    assert messages == [f"task {task['id']} attempt 1: ERROR 503"]


async def test_nothing_is_logged_per_request_without_log(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server(log=False)
    caplog.set_level(logging.INFO)
    async with client_for(server) as client:
        await register_owner(client, "quiet-owner")
    assert not [r for r in caplog.records if r.name == "tasks_server.access"]


def test_settings_and_check_config_hide_operator_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    secrets = {
        "CIPHER_KEY": "cipher-secret-value",
        "ADMIN_KEY": "admin-secret-value-123",
        "METRICS_KEY": "metrics-secret-value-123",
        "BACKUP_OBJECT_STORAGE_SECRET_KEY": "s3-secret-value",
    }
    for key, secret in secrets.items():
        monkeypatch.setenv(key, secret)
    monkeypatch.chdir(tmp_path)
    settings = load()
    assert settings.admin_key == secrets["ADMIN_KEY"]
    assert cli.main(["check-config"]) == 0
    shown = capsys.readouterr().out + repr(settings)
    for secret in secrets.values():
        assert secret not in shown


def test_a_short_operator_key_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("METRICS_KEY", "short-secret")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["check-config"]) == 2
    error = capsys.readouterr().err
    assert "METRICS_KEY" in error and "short-secret" not in error


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_a_forged_log_line_is_impossible(tmp_path: Path, fmt: str) -> None:
    """Control characters a client puts in a request path (``%0a``, ``%0d``, escape
    sequences, U+2028) come out escaped: one request is one log line."""
    forged = "FORGED 2030-01-01 00:00:00 INFO tasks_server.access: GET /admin 200"
    paths = [
        "/healthz%0a" + urllib.parse.quote(forged),
        "/healthz%0d%0a" + urllib.parse.quote(forged),
        "/x%1b%5b2J%0b%0c%e2%80%a8" + urllib.parse.quote(forged),
    ]
    with ServerProcess(tmp_path, LOG="1", LOG_FORMAT=fmt, LOG_LEVEL="INFO") as server:
        for path in paths:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(
                    f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
                )
                assert sock.recv(4096).startswith(b"HTTP/1.1 ")
        assert server.terminate() == 0
    lines = server.log.read_text().splitlines()
    access = [line for line in lines if "FORGED" in line]
    assert len(access) == len(paths)
    for line in lines:
        assert not line.startswith("FORGED")
        assert not any(ch in line for ch in "\r\x0b\x0c\x1b\u2028")
    if fmt == "json":
        assert all(json.loads(line)["logger"] == "tasks_server.access" for line in access)
    else:
        assert all(" INFO tasks_server.access: GET /" in line for line in access)
        assert "\\x0a" in access[0]
