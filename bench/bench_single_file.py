"""Single-file build: size, start-up time, and one task end to end.

    .venv/bin/python bench/bench_single_file.py            # uses dist/tasks-server
    .venv/bin/python bench/bench_single_file.py --build    # runs scripts/build-single-file first
    .venv/bin/python bench/bench_single_file.py --artifact path/to/exe --runs 5

Each run starts ``ARTIFACT serve`` on a free port with a fresh database and measures the
time until ``/readyz`` answers 200. The first run uses an empty unpack directory
(SHIV_ROOT), so it includes a zipapp's one-time unpacking; the others are warm. The last
run registers an owner and a task against a local target and waits for the call. Figures
only: nothing here asserts on speed (tests/system/test_single_file.py reuses ``smoke``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARTIFACT = ROOT / "dist" / "tasks-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def call(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` every 10 ms until it is truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{what}: not within {timeout} s")


@dataclass
class Target:
    """A local HTTP target that records the times of the requests it gets."""

    arrivals: list[float] = field(default_factory=list)

    @contextmanager
    def running(self) -> Iterator[str]:
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                target.arrivals.append(time.monotonic())
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/hook"
        finally:
            server.shutdown()
            server.server_close()


@contextmanager
def serving(artifact: Path, directory: Path, env: dict[str, str]) -> Iterator[tuple[str, float]]:
    """Start ``artifact serve``; yield (base URL, seconds until /readyz answered 200)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {
        **os.environ,
        **env,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PATH_SQLITE": str(directory / "tasks.db"),
        "CIPHER_KEY": "bench-single-file",
        "LOG_LEVEL": "WARNING",
        "EGRESS_ALLOW": "127.0.0.1/32",  # the sink is on loopback
    }
    log = (directory / "server.log").open("wb")
    started = time.monotonic()
    process = subprocess.Popen(
        [str(artifact), "serve"], env=environment, cwd=directory, stdout=log, stderr=log
    )
    try:
        wait_for(
            lambda: process.poll() is None and call(f"{url}/readyz")["status"] == "ok",
            timeout=120,
            what="server ready",
        )
        yield url, time.monotonic() - started
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        log.close()
        if code != 0:
            raise RuntimeError(f"server exited {code}: {(directory / 'server.log').read_text()}")


def smoke(url: str) -> float:
    """Register an owner and a task that calls a local target; return the seconds from
    the registration to the target receiving the call (after the task's 1 ms delay)."""
    target = Target()
    with target.running() as hook:
        owner = call(f"{url}/v1/owners/register", "POST", {"name": "single-file"})
        auth = {"Authorization": f"Bearer {owner['key']}", "X-Tasks-Owner-Id": owner["id"]}
        body = {"httpRequest": {"url": hook, "method": "POST", "data": {"hello": "world"}}}
        sent = time.monotonic()
        task = call(f"{url}/v1/queues/register", "POST", body, auth)
        wait_for(lambda: target.arrivals, timeout=30, what="the task's call")
        latency = target.arrivals[0] - sent
        wait_for(
            lambda: call(f"{url}/v1/queues/{task['id']}", headers=auth)["state"] == "SUCCESS",
            timeout=30,
            what="SUCCESS",
        )
    return latency


def version_time(artifact: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run([str(artifact), "--version"], env={**os.environ, **env}, check=True,
                   capture_output=True)  # fmt: skip
    return time.monotonic() - started


def measure(artifact: Path, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tasks-single-file-") as tmp:
        unpack = {"SHIV_ROOT": str(Path(tmp) / "shiv")}  # empty: the first run is cold
        starts: list[float] = []
        latency = 0.0
        for run in range(runs):
            directory = Path(tmp) / f"run{run}"
            directory.mkdir()
            with serving(artifact, directory, unpack) as (url, seconds):
                starts.append(seconds)
                if run == runs - 1:
                    latency = smoke(url)
        version_s = version_time(artifact, unpack)
    return {
        "artifact": str(artifact),
        "size_mb": round(artifact.stat().st_size / 1e6, 1),
        "cold_start_s": round(starts[0], 3),
        "warm_start_s": round(statistics.median(starts[1:] or starts), 3),
        "version_s": round(version_s, 3),
        "task_latency_ms": round(latency * 1000, 1),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT,
                        help="the executable to measure (default dist/tasks-server)")  # fmt: skip
    parser.add_argument("--build", choices=["shiv", "pyinstaller"],
                        help="build it first with scripts/build-single-file")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="start-ups to time (default 3)")
    args = parser.parse_args()
    if args.build:
        subprocess.run(["sh", str(ROOT / "scripts" / "build-single-file"), args.build], check=True)
    if not args.artifact.is_file():
        raise SystemExit(f"{args.artifact} not found: run sh scripts/build-single-file")
    result = measure(args.artifact.resolve(), max(args.runs, 1))
    for key, value in result.items():
        print(f"{key:16} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
