"""The README's "Failures, alerts and callbacks" examples run as written: every ``sh``
block of that section runs in bash (curl and jq) against the real server in a subprocess,
with a real target on 127.0.0.1, and must exit 0 (the blocks check their answers with
``curl -f`` and ``jq -e``)."""

from __future__ import annotations

import asyncio
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
SECTION = "## Failures, alerts and callbacks"


def section_blocks() -> list[str]:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    body = text[start : end if end >= 0 else None]
    return re.findall(r"```sh\n(.*?)```", body, re.DOTALL)


def answer(arrival: Arrival) -> Reply:
    return Reply(500, b"failed") if arrival.path.startswith("/fail") else Reply(200, b"fine")


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        server.route("/ok", answer)
        server.route("/fail", answer)
        server.route("/callback", answer)
        server.route("/alerts", answer)
        yield server


def test_the_section_has_examples() -> None:
    assert len(section_blocks()) >= 1


async def test_every_example_runs(tmp_path: Path, target: TargetServer) -> None:
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    assert not missing, f"install.sh installs these: {missing}"
    env = {"EGRESS_ALLOW": "127.0.0.1/32"}
    with ServerProcess(tmp_path, **env) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            owner = (await client.post("/v1/owners/register", json={"name": "readme"})).json()
        preamble = (
            "set -euo pipefail\n"
            f"URL={server.url}\nTARGET=http://127.0.0.1:{target.port}\n"
            f"OWNER_ID={owner['id']}\nKEY={owner['key']}\n"
            'H=(-H "Authorization: Bearer $KEY" -H "X-Tasks-Owner-Id: $OWNER_ID")\n'
        )
        path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # tasks-server itself
        for block in section_blocks():
            process = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                preamble + block,
                cwd=tmp_path,
                env={**os.environ, "PATH": path},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
            assert process.returncode == 0, f"{block}\n--- output ---\n{output.decode()}"
