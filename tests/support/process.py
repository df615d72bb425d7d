"""The real server in a subprocess, for whole-process tests and benchmarks."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

TEST_CIPHER_KEY = secrets.token_urlsafe(32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``tasks-server serve`` on a free port with its database in ``directory``."""

    def __init__(
        self, directory: Path, preexec_fn: Callable[[], None] | None = None, **env: str
    ) -> None:
        self.directory = directory
        self.preexec_fn = preexec_fn  # runs in the child before exec (e.g. setrlimit)
        self.port = free_port()
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "PATH_SQLITE": str(directory / "tasks.db"),
            # a real random key (short and example values are refused), the same for every
            # server of the test run, so several nodes can share one database
            "CIPHER_KEY": TEST_CIPHER_KEY,
            "LOG_LEVEL": "WARNING",
            # the tests' targets are on loopback, which is refused unless allowed
            "EGRESS_ALLOW": "127.0.0.1/32",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> Self:
        self.port = free_port() if self.process is not None else self.port
        self.env["PORT"] = str(self.port)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tasks_server", "serve"],
                cwd=self.directory,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=self.preexec_fn,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.02)
        raise RuntimeError(f"server not ready after {timeout} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
