"""A real S3-compatible server for backup tests: moto's standalone server in a subprocess
on 127.0.0.1, on a port the kernel picks (``-p 0``; the server prints the one it got)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY = "AKIATESTBACKUPKEY0001"
SECRET_KEY = "test-backup-secret-key-0123456789abcdef"
_LISTENING = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")


class S3Server:
    """``python -m moto.server`` with its output in ``directory/moto.log``.

    ``start`` waits (with a deadline) until the server answers; ``stop`` ends the process
    and waits for it. ``client()`` is a boto3 client for setting up and inspecting buckets.
    """

    def __init__(self, directory: Path) -> None:
        self.log = directory / "moto.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Self:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"moto server not ready after {timeout} s")
            time.sleep(0.02)  # polling a subprocess with a deadline, not a guessed wait
        return self

    def _answers(self) -> bool:
        if not self.port:
            found = _LISTENING.search(self.log.read_bytes())
            if found is None:
                return False
            self.port = int(found[1])
        try:
            with urllib.request.urlopen(self.endpoint, timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def client(self) -> S3Client:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
