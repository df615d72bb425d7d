"""A bounded schemathesis run against the real server: every operation of /openapi.json,
with generated input (valid and invalid: schemathesis's explicit examples, its coverage
cases at the schema's boundaries, then ``EXAMPLES`` fuzzed cases), answers without a
server error, and the server logs no traceback.

Generating cases for the large request schemas costs far more than answering them, so the
operations are spread over two processes (both cores); the run is derandomized, so every
run sends the same cases. Generation is the run's cost (three quarters of the workers'
CPU): 200 fuzzed cases per operation (about 22,000 cases in all) took 132 s on an idle
two-core machine, so ``EXAMPLES`` is 170, which keeps the run under two minutes and every
operation at about 180 cases or more (a few hundred on average, thousands for the
operations with many coverage cases).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.generation.hypothesis.builder import (
    HypothesisTestConfig,
    HypothesisTestMode,
    create_test,
)

from tasks_server.api.openapi import spec
from tests.support.process import ServerProcess

EXAMPLES = 170  # fuzzed cases per operation, beside the explicit and coverage cases
WORKERS = 2
ADMIN_KEY = "admin-key-for-the-fuzz-run-0123456789"
logger = logging.getLogger(__name__)
UNAUTHENTICATED = ("/v1/owners/register", "/metrics", "/healthz", "/readyz", "/status")


@dataclass
class Outcome:
    """What one operation's run sent and what it got back."""

    label: str
    has_input: bool = False  # the operation takes parameters or a body
    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)  # a curl command and the answer


@dataclass(frozen=True)
class Target:
    url: str
    owner: dict[str, str]


def _auth(path: str, security: list[Any], target: Target) -> dict[str, str]:
    if {"adminKey": []} in security:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}
    return {} if path in UNAUTHENTICATED else target.owner


def fuzz_operation(target: Target, label: str, examples: int) -> Outcome:
    """Run schemathesis's cases for one operation (in a worker process); collect, do not
    raise, so that no time goes to shrinking and every operation gets its run."""
    schema = schemathesis.openapi.from_dict(spec())  # fresh: the same cases every run
    operation = next(
        result.ok()
        for result in schema.get_all_operations()
        if f"{result.ok().method.upper()} {result.ok().path}" == label
    )
    has_input = any(True for _ in operation.iter_parameters()) or bool(operation.body)
    outcome = Outcome(label, has_input=has_input)
    session = requests.Session()
    session.trust_env = False  # no proxy or netrc lookup in the environment per request
    auth = _auth(operation.path, operation.definition.raw.get("security", []), target)

    def check(case: Any) -> None:
        if case.query:
            case.query.pop("wait", None)  # a long poll proves nothing here
        response = case.call(
            base_url=target.url,
            session=session,
            headers={**(case.headers or {}), **auth},
            timeout=15,
        )
        outcome.cases += 1
        status = response.status_code
        outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
        if status >= 500:
            outcome.server_errors.append(f"{case.as_curl_command()}\n-> {status} {response.text}")

    test = create_test(
        operation=operation,
        test_func=check,
        config=HypothesisTestConfig(
            project=schema.config,
            modes=list(HypothesisTestMode),
            settings=hypothesis.settings(
                max_examples=examples,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            ),
        ),
    )
    test()
    return outcome


def labels_heaviest_first() -> list[str]:
    """Every operation, those with a request body first (they take longest), so the two
    workers finish together."""
    schema = schemathesis.openapi.from_dict(spec())
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: -len(str(op.definition.raw.get("requestBody", ""))))
    return [f"{op.method.upper()} {op.path}" for op in operations]


def cpu_seconds(pid: int) -> float:
    """User and system CPU a running process has used (Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Target, ServerProcess]]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    closed = "http://127.0.0.1:9"  # every outgoing call goes nowhere, quickly
    with ServerProcess(
        directory,
        ADMIN_KEY=ADMIN_KEY,
        OWNER_REGISTRATION="open",
        AUTH_FAILURES_PER_MINUTE="0",
        TASKS_IN_QUEUE_LIMIT="0",  # registrations keep reaching the store, not the limit
        http_proxy=closed,
        https_proxy=closed,
        ALL_PROXY=closed,
    ) as server:
        owner = httpx.post(f"{server.url}/v1/owners/register", json={"name": "fuzz-owner"}).json()
        headers = {"Authorization": f"Bearer {owner['key']}", "X-Tasks-Owner-Id": owner["id"]}
        yield Target(server.url, headers), server


@pytest.mark.timeout(1800)  # a loaded machine; about two minutes on an idle one
def test_no_server_errors(api: tuple[Target, ServerProcess]) -> None:
    target, server = api
    labels = labels_heaviest_first()
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
        futures = [pool.submit(fuzz_operation, target, label, EXAMPLES) for label in labels]
        outcomes = [future.result() for future in futures]
    elapsed = time.monotonic() - started
    workers_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert server.process is not None
    cases = sum(outcome.cases for outcome in outcomes)
    # on an idle two-core machine the run takes about (workers' + server's CPU) / 2
    logger.info(
        "schemathesis: %d operations, %d cases (%d to %d per operation) in %.1f s, "
        "workers' CPU %.0f s, server's CPU %.0f s",
        len(outcomes),
        cases,
        min(o.cases for o in outcomes if o.has_input),
        max(o.cases for o in outcomes),
        elapsed,
        workers_cpu.ru_utime + workers_cpu.ru_stime,
        cpu_seconds(server.process.pid),
    )
    for outcome in sorted(outcomes, key=lambda o: o.cases):
        logger.info("%5d %s %s", outcome.cases, outcome.label, outcome.statuses)
    errors = [error for outcome in outcomes for error in outcome.server_errors]
    assert not errors, "\n\n".join(errors[:10])
    # every operation was exercised for real, not cut short by a schema problem (one
    # without parameters or body has only a handful of distinct requests)
    verbs = {"get", "put", "post", "patch", "delete"}
    operations = sum(len(verbs & set(methods)) for methods in spec()["paths"].values())
    assert len(outcomes) == operations
    short = [(o.label, o.cases) for o in outcomes if o.has_input and o.cases < EXAMPLES]
    assert not short
    assert "Traceback" not in server.log.read_text()
