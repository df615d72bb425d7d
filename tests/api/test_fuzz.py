"""A bounded schemathesis run against the real server: every operation of /openapi.json,
with generated (mostly invalid) input, answers without a server error, and the server
logs no traceback.

Generating examples for the large request schemas is what takes the time (about 2 s per
20 examples of a task body on a busy two-core machine), so the default suite runs 5
examples per operation and the ``slow`` run 200 (``pytest -m slow tests/api/test_fuzz.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tasks_server.api.openapi import spec
from tests.support.process import ServerProcess

ADMIN_KEY = "admin-key-for-the-fuzz-run-0123456789"
SCHEMA = schemathesis.openapi.from_dict(spec())
HEALTH = list(HealthCheck)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    closed = "http://127.0.0.1:9"  # every outgoing call goes nowhere, quickly
    with ServerProcess(
        directory,
        ADMIN_KEY=ADMIN_KEY,
        OWNER_REGISTRATION="open",
        AUTH_FAILURES_PER_MINUTE="0",
        http_proxy=closed,
        https_proxy=closed,
        ALL_PROXY=closed,
    ) as server:
        owner = httpx.post(f"{server.url}/v1/owners/register", json={"name": "fuzz-owner"}).json()
        headers = {"Authorization": f"Bearer {owner['key']}", "X-Tasks-Owner-Id": owner["id"]}
        yield server.url, headers
        text = server.log.read_text()
    assert "Traceback" not in text


def _check(case: Any, api: tuple[str, dict[str, str]]) -> None:
    url, owner = api
    path: str = case.operation.path
    if path.startswith("/v1/admin/"):
        auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    elif path in ("/v1/owners/register", "/metrics", "/healthz", "/readyz", "/status"):
        auth = {}
    else:
        auth = owner
    if case.query:
        case.query.pop("wait", None)  # a long poll proves nothing here
    response = case.call(base_url=url, headers={**(case.headers or {}), **auth}, timeout=15)
    assert response.status_code < 500, (case.as_curl_command(), response.text)


@SCHEMA.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=HEALTH, database=None)
def test_no_server_errors(case: Any, api: tuple[str, dict[str, str]]) -> None:
    _check(case, api)


@pytest.mark.slow
@pytest.mark.timeout(600)
@SCHEMA.parametrize()
@settings(max_examples=200, deadline=None, suppress_health_check=HEALTH, database=None)
def test_no_server_errors_in_a_long_run(case: Any, api: tuple[str, dict[str, str]]) -> None:
    _check(case, api)
