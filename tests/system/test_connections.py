"""Bounded connections, against the real server on a free port: slow request heads and
bodies are cut off, a declared oversized body is refused before it is read, and a crowd
of idle sockets cannot lock out ``/healthz``."""

from __future__ import annotations

import resource
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.process import ServerProcess

HEADER_TIMEOUT_S = 1.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        tmp_path, HTTP_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S), HTTP_BODY_TIMEOUT_S="1"
    ) as process:
        yield process


def _closed_after(sock: socket.socket, drip: bytes, limit_s: float) -> tuple[float, bytes]:
    """Send ``drip`` a byte at a time (a slow client) until the server closes; returns
    the seconds it took and what the server sent."""
    sock.settimeout(0.2)
    started = time.monotonic()
    received = b""
    for byte in (drip[i : i + 1] for i in range(len(drip))):
        try:
            sock.sendall(byte)
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:  # reset: closed
            break
        if not chunk:
            break
        received += chunk
        if time.monotonic() - started > limit_s:
            break
    return time.monotonic() - started, received


def test_a_slowloris_head_is_cut_off_within_the_header_timeout(server: ServerProcess) -> None:
    endless = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-Slow: " + b"a" * 500
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        elapsed, received = _closed_after(sock, endless, limit_s=30)
    assert elapsed < HEADER_TIMEOUT_S + 1.5, elapsed
    assert received.startswith(b"HTTP/1.1 408")


def test_a_connection_that_never_speaks_is_closed(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(HEADER_TIMEOUT_S + 5)
        started = time.monotonic()
        assert sock.recv(4096) == b""
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 1.5


def test_a_stalled_body_is_cut_off(server: ServerProcess) -> None:
    head = (
        b"POST /v1/owners/register HTTP/1.1\r\nHost: t\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + b'{"name": "')
        sock.settimeout(10)
        started = time.monotonic()
        received = sock.recv(4096)
        while received and not received.endswith(b"}") and sock.recv(4096):
            pass
    assert time.monotonic() - started < 1 + 1.5
    assert b"201" not in received.split(b"\r\n")[0]


def test_an_oversized_body_is_refused_before_it_is_read(server: ServerProcess) -> None:
    head = (
        b"POST /v1/owners/register HTTP/1.1\r\nHost: t\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head)  # and not one byte of the body
        sock.settimeout(5)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")


def _soft_limit(soft: int, hard: int | None) -> Callable[[], None]:
    def apply() -> None:
        _, current_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard or current_hard))

    return apply


@pytest.mark.parametrize(
    "hard", [None, 1024], ids=["soft-limit-raised-at-start", "hard-limit-1024-capped"]
)
def test_1100_idle_connections_leave_healthz_answering(tmp_path: Path, hard: int | None) -> None:
    soft, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if own_hard != resource.RLIM_INFINITY and own_hard < 1300:
        pytest.skip("this test needs 1,300 descriptors of its own")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1300), own_hard))
    idle: list[socket.socket] = []
    # long head timeout: the sockets stay open for the whole test unless evicted
    with ServerProcess(
        tmp_path, preexec_fn=_soft_limit(1024, hard), HTTP_HEADER_TIMEOUT_S="60"
    ) as server:
        try:
            for _ in range(1100):
                idle.append(socket.create_connection(("127.0.0.1", server.port)))
            for _ in range(3):
                with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as response:
                    assert response.status == 200
        finally:
            for sock in idle:
                sock.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, own_hard))
    assert "Too many open files" not in server.log.read_text()
