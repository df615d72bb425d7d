"""Registrations through several API processes sharing one listening socket and one
SQLite file, beside one process and the bare-framework route: what a multi-process mode
would give on this machine before anyone builds it.

    .venv/bin/python -m bench.bench_api_processes [--seconds 8] [--processes 1 2]

Each process is a whole server (``app.build``) serving a socket bound once by this script
and inherited by the processes (the kernel hands each connection to one of them); every
process writes through its own group-commit writer, so commits of different processes
wait for SQLite's one write lock. The tasks are due in an hour, so no process's scheduler
does anything: the figure is registration throughput only (a real mode would also elect
one scheduler and pass it new tasks). Prints each figure beside the bare route's and the
ratio; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import signal
import socket
import sys
import tempfile

from bench.common import ROOT, Proc, free_port, register_owner, task_body, wait_http
from bench.limits import run_wrk, wrk_script


def serve(sock: socket.socket, env: dict[str, str]) -> None:
    """One API process on the inherited socket (runs in a forked child)."""
    os.environ.update(env)
    import uvicorn

    from tasks_server.api.transport import ConnectionLimits, uvicorn_options
    from tasks_server.app import build
    from tasks_server.config import load

    settings = load()
    server = build(settings)
    limits = ConnectionLimits(settings.http_header_timeout_s, settings.http_body_timeout_s, 4096)
    config = uvicorn.Config(
        server.asgi,
        loop="uvloop",
        **uvicorn_options(limits, settings.http_keep_alive_s),
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
    )
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)  # as `serve` does
    uvicorn.Server(config).run(sockets=[sock])


def measure(processes: int, seconds: int) -> dict[str, float]:
    directory = tempfile.mkdtemp(prefix="tasks-bench-")
    port = free_port()
    env = {
        "PATH_SQLITE": os.path.join(directory, "tasks.db"),
        "CIPHER_KEY": secrets.token_urlsafe(32),
        "LOG_LEVEL": "WARNING",
        "TASKS_IN_QUEUE_LIMIT": "0",
        "EGRESS_ALLOW": "127.0.0.1/32",
        "SQLITE_SYNCHRONOUS": "FULL",
    }
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    children = []
    try:
        for index in range(processes):
            pid = os.fork()
            if pid == 0:
                try:
                    serve(sock, env)
                finally:
                    os._exit(0)
            children.append(pid)
            if index == 0:  # the first one creates and migrates the database
                wait_http(f"http://127.0.0.1:{port}/healthz")
        wait_http(f"http://127.0.0.1:{port}/healthz")
        headers = asyncio.run(register_owner(port, "processes"))
        script = wrk_script(task_body("http://127.0.0.1:9/hook", executionDelay=3_600_000), headers)
        url = f"http://127.0.0.1:{port}/v1/queues/register"
        run_wrk(url, script, 2)  # warm-up
        return run_wrk(url, script, seconds)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        sock.close()


def bare(seconds: int) -> dict[str, float]:
    port = free_port()
    proc = Proc([sys.executable, "-m", "bench.bare_app", str(port)], cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        script = wrk_script(task_body("http://127.0.0.1:9/hook", executionDelay=3_600_000), {})
        url = f"http://127.0.0.1:{port}/v1/queues/register"
        run_wrk(url, script, 2)
        return run_wrk(url, script, seconds)
    finally:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2])
    args = parser.parse_args()
    ceiling = bare(args.seconds)
    print(f"machine: {os.cpu_count()} cores; bare route {ceiling['rps']:,.0f}/s")
    for count in args.processes:
        m = measure(count, args.seconds)
        print(
            f"{count} API process(es): {m['rps']:,.0f}/s p50 {m['p50']:.2f} ms "
            f"p99 {m['p99']:.2f} ms errors {m['errors']:.0f} | "
            f"ratio {m['rps'] / ceiling['rps']:.2f} (target >= 0.6)"
        )


if __name__ == "__main__":
    main()
