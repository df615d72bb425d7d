"""Shared pieces of the benchmarks: a server and a sink in subprocesses, a raw
keep-alive HTTP client fast enough not to be the bottleneck, and statistics."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class Proc:
    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        log: Path | None = None,
    ) -> None:
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.popen = subprocess.Popen(
            list(args), env={**os.environ, **(env or {})}, cwd=cwd, stdout=out, stderr=out
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    def terminate(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(60)


class Server:
    """tasks-server serve in a subprocess on a free port."""

    def __init__(self, directory: Path | None = None, **env: str) -> None:
        self.directory = directory or Path(tempfile.mkdtemp(prefix="tasks-bench-"))
        self.port = free_port()
        self.env = {
            "PORT": str(self.port),
            "PATH_SQLITE": str(self.directory / "tasks.db"),
            "CIPHER_KEY": secrets.token_urlsafe(32),
            "LOG_LEVEL": "WARNING",
            "TASKS_IN_QUEUE_LIMIT": "0",
            "MAX_IN_FLIGHT": "4000",
            # the sinks run on loopback, which the egress policy refuses unless allowed
            "EGRESS_ALLOW": "127.0.0.1/32",
            **env,
        }
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.proc = Proc(
            [sys.executable, "-m", "tasks_server", "serve"],
            self.env,
            cwd=self.directory,
            log=self.directory / "server.log",
        )
        wait_http(f"{self.url}/healthz")
        return self

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sink:
    def __init__(self, status: int = 200) -> None:
        self.port = free_port()
        self.proc = Proc(
            [sys.executable, "-m", "bench.sink", str(self.port), str(status)], cwd=ROOT
        )
        wait_http(f"http://127.0.0.1:{self.port}/__reset")

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def arrivals(self) -> list[tuple[float, str, str]]:
        with urllib.request.urlopen(self.url("/__arrivals"), timeout=30) as response:
            text = response.read().decode()
        return [tuple(json.loads(line)) for line in text.splitlines() if line]  # type: ignore[misc]

    def count(self) -> int:
        """How many calls arrived: cheap for the sink, unlike ``arrivals``."""
        with urllib.request.urlopen(self.url("/__count"), timeout=30) as response:
            return int(response.read())

    def wait_count(self, count: int, timeout: float) -> None:
        """Poll until ``count`` calls arrived or ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        while self.count() < count and time.monotonic() < deadline:
            time.sleep(0.2)

    def reset(self) -> None:
        urllib.request.urlopen(self.url("/__reset"), timeout=5).close()


class RawClient:
    """One keep-alive HTTP/1.1 connection; enough for JSON request/response pairs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        lines = [f"{method} {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
        if body:
            lines.append("Content-Type: application/json")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        payload = await self.reader.readexactly(length)
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def register_owner(port: int, name: str) -> dict[str, str]:
    client = RawClient(port)
    status, body = await client.request(
        "POST", "/v1/owners/register", json.dumps({"name": name}).encode()
    )
    client.close()
    assert status == 201, body
    owner = json.loads(body)
    return {"Authorization": f"Bearer {owner['key']}", "X-Tasks-Owner-Id": owner["id"]}


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def task_body(url: str, **config: Any) -> bytes:
    return json.dumps(
        {"httpRequest": {"url": url, "method": "POST", "data": {"n": 1}}, "config": config}
    ).encode()
