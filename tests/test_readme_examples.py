"""The README's examples run as written: every ``sh`` block of the sections below runs in
bash (curl, jq and the ``tasks-server`` command) against the real server in a subprocess,
with a real target on 127.0.0.1, and must exit 0.

What the test changes, and only that: the blocks' ``URL=…`` and ``TARGET=…`` lines are
replaced by the served instance's address and the target's, and the block that starts a
server is not run (the test starts its own with the same keys). In the sections that do
not check their answers themselves, every ``curl`` call must answer 2xx (the test's
``curl`` adds ``--fail-with-body``); blocks run under ``set -euo pipefail``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.process import ServerProcess
from tests.support.targets import Arrival, Reply, TargetServer

README = Path(__file__).resolve().parent.parent / "README.md"
ADMIN_KEY = "readme-admin-key-0123456789abcdef"
METRICS_KEY = "readme-metrics-key-0123456789abcdef"
# (section heading, whether the test's curl requires 2xx: the failures section's blocks
# use `curl -f` and `jq -e` themselves)
SECTIONS = [
    ("## Quick start with curl", True),
    ("## Retries and edits", True),
    ("## Command line", True),
    ("## Recurring schedules", True),
    ("## Workflows", True),
    ("## Failures, alerts and callbacks", False),
    ("## Delivery: retries, priority, deduplication", True),
    ("## Outgoing calls", True),
]
README_URL = "URL=http://127.0.0.1:9420"
README_TARGET = "TARGET=https://example.com"
STARTS_A_SERVER = "tasks-server serve"
STRICT_CURL = (
    "curl() {\n"
    '    case " $* " in\n'
    '        *" -f "*|*" -sf "*|*" --fail "*) command curl "$@" ;;\n'
    '        *) command curl --fail-with-body "$@" ;;\n'
    "    esac\n"
    "}\n"
)


def section_blocks(heading: str) -> list[str]:
    text = README.read_text()
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    body = text[start : end if end >= 0 else None]
    return re.findall(r"```sh\n(.*?)```", body, re.DOTALL)


def runnable(block: str) -> str:
    """The block without its URL and TARGET assignments (the preamble sets both)."""
    lines = block.splitlines()
    kept = [
        line
        for line in lines
        if not (line.startswith(README_URL) or line.startswith(README_TARGET))
    ]
    return "\n".join(kept) + "\n"


def answer(arrival: Arrival) -> Reply:
    return Reply(500, b"failed") if arrival.path.startswith("/fail") else Reply(200, b"fine")


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        for path in (
            "/ok",
            "/fail",
            "/callback",
            "/alerts",
            "/hook",
            "/later",
            "/report",
            "/tax",
            "/store",
        ):
            server.route(path, answer)
        yield server


def test_every_section_has_examples() -> None:
    for heading, _ in SECTIONS:
        assert section_blocks(heading), heading
    quick_start = "\n".join(section_blocks("## Quick start with curl"))
    # the lines the test replaces are there, as a reader sees them
    assert re.search(rf"^{re.escape(README_URL)}$", quick_start, re.MULTILINE)
    assert re.search(rf"^{re.escape(README_TARGET)}\s", quick_start, re.MULTILINE)
    starting = [b for b in section_blocks("## Quick start with curl") if STARTS_A_SERVER in b]
    assert len(starting) == 1 and "ADMIN_KEY=" in starting[0] and "METRICS_KEY=" in starting[0]


async def run_block(script: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.mark.timeout(300)
async def test_every_example_runs(tmp_path: Path, target: TargetServer) -> None:
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    assert not missing, f"install.sh installs these: {missing}"
    keys = {"ADMIN_KEY": ADMIN_KEY, "METRICS_KEY": METRICS_KEY}
    with ServerProcess(tmp_path, **keys) as server:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(base_url=server.url) as client:
            registered = await client.post(
                "/v1/owners/register", json={"name": "readme"}, headers=admin
            )
            owner = registered.json()
        preamble = (
            "set -euo pipefail\n"
            f"URL={server.url}\nTARGET=http://127.0.0.1:{target.port}\nNAME=readme\n"
            f"OWNER_ID={owner['id']}\nKEY={owner['key']}\n"
            'H=(-H "Authorization: Bearer $KEY" -H "X-Tasks-Owner-Id: $OWNER_ID")\n'
        )
        path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # tasks-server itself
        env = {
            **os.environ,
            **keys,
            "PATH": path,
            "TASKS_URL": server.url,
            "TASKS_OWNER_ID": owner["id"],
            "TASKS_KEY": owner["key"],
        }
        ran = 0
        for heading, strict in SECTIONS:
            for block in section_blocks(heading):
                if STARTS_A_SERVER in block:
                    continue
                script = preamble + (STRICT_CURL if strict else "") + runnable(block)
                code, output = await run_block(script, tmp_path, env)
                assert code == 0, f"{heading}\n{block}\n--- output ---\n{output}"
                ran += 1
        assert ran >= 10
    # the quick start's task reached the target with its body; the revoked one never did
    hooks = [json.loads(a.body) for a in target.arrivals_at("/hook") if a.body]
    assert {"hello": "world"} in hooks
    assert target.arrivals_at("/later") == []
    # the workflow's steps ran in order, the first with its input filled in
    [tax] = target.arrivals_at("/tax")
    assert json.loads(tax.body) == {"order": "A-1"}
    assert len(target.arrivals_at("/store")) == 1
