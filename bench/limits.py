"""How close the server comes to what this machine can do, as ratios measured in one run.

    .venv/bin/python -m bench.limits [--seconds 10] [--burst 3000] [--only NAME ...]

NAME is registrations, burst, restart or spread (all of them when none is given).

Each figure is printed beside its ceiling, measured the same way in the same run:

* registrations: ``wrk -t2 -c32`` posting one task body to ``POST /v1/queues/register``
  of the real server (``SQLITE_SYNCHRONOUS=FULL``), against the same load on a bare
  Starlette + uvicorn route that only parses the JSON (``bench/bare_app.py``), and on
  that route committing each body to SQLite the way the server's writer does before it
  answers (``--durable``): what the commit alone costs, and the server's CPU per
  registration;
* burst: the server draining N tasks due at one instant into the local sink, against
  pycurl's ``CurlMulti`` alone sending the same N calls to the same sink (128 at a time,
  connections reused; the median of three runs); the first arrival's lateness beside
  CurlMulti's first arrival (both open their connections then); and the CPU time each
  spends per call (the server's from the end of the registrations to a second after the
  last arrival: claims, starts, outcomes), which a loaded machine distorts far less than
  elapsed time;
* restart: the same burst due well after a kill -9 and restart;
* spread: tasks due one every 10 ms, each call's lateness at the sink.

Beside CurlMulti alone, the burst prints libcurl driven by its sockets alone (what an
event loop must do: ``socket_action`` on the sockets epoll reports ready, libcurl's socket
and timer callbacks, no server work), which is the least a Python dispatcher on an event
loop can cost, and the server's own dispatcher alone
(``CurlDispatcher`` in this process, on uvloop as in the server, the same calls started
8 at a time): how much of the gap the dispatcher's Python around libcurl makes, and how
much the rest of the server (claims, outcomes, the scheduler) adds.

The load average is printed beside each figure: on a shared machine the elapsed-time
ratios move with it.

wrk comes from the system packages (``install.sh`` installs it). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pycurl

from bench.bench_engine import register_many
from bench.common import (
    ROOT,
    Proc,
    RawClient,
    Server,
    Sink,
    free_port,
    percentile,
    register_owner,
    task_body,
    wait_http,
)
from tasks_server.cli.main import tune_collector
from tasks_server.dispatch import CurlDispatcher, CurlSettings
from tasks_server.dispatch.egress import EgressPolicy
from tasks_server.models import Call, HttpRequest, TaskConfig

CONNECTIONS = 32
# The burst is due this long after its registration starts: registering 3,000 tasks takes
# a few seconds on a busy machine, and every task must still be in the future when it is
# registered. The restart lead also covers the kill and the start.
BURST_LEAD_MS = 10_000
RESTART_LEAD_MS = 20_000
CURL_PARALLEL = 128
# CurlMulti alone's time moves by half from run to run on a shared machine: the ratio is
# taken to the median of a few runs
CEILING_ROUNDS = 3
START_CHUNK = 8  # calls the dispatcher alone starts per pass, as the scheduler does
SPREAD_TASKS, SPREAD_STEP_MS = 2000, 10
SERVER_ENV = {"SQLITE_SYNCHRONOUS": "FULL", "EGRESS_ALLOW": "127.0.0.1/32"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


# -- registrations: wrk against the bare route and the server --------------------------------


def wrk_script(body: bytes, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body.decode())}"]
    lines.append('wrk.headers["Content-Type"] = "application/json"')
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    path = Path(tempfile.mkstemp(suffix=".lua")[1])
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(url: str, script: Path, seconds: int) -> dict[str, float]:
    """Requests/s, p50/p99 latency (ms) and errors (socket errors + non-2xx)."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])}  # type: ignore[index]
    for label, key in (("50%", "p50"), ("99%", "p99")):
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out).groups()  # type: ignore[union-attr]
        figures[key] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = 0
    if found := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(found[1])
    if found := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(n) for n in found.groups())
    figures["errors"] = errors
    return figures


def bare_route(script: Path, seconds: int, durable: bool) -> tuple[dict[str, float], str]:
    """wrk against ``bench/bare_app.py`` (with ``--durable``, the route that commits)."""
    port = free_port()
    args = [sys.executable, "-m", "bench.bare_app", str(port), *(["--durable"] * durable)]
    bare = Proc(args, cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        run_wrk(f"http://127.0.0.1:{port}/v1/queues/register", script, 2)  # warm-up
        return run_wrk(f"http://127.0.0.1:{port}/v1/queues/register", script, seconds), load()
    finally:
        bare.kill()


def registrations(seconds: int) -> None:
    sink_url = "http://127.0.0.1:9/hook"  # never called: the tasks are due in an hour
    body = task_body(sink_url, executionDelay=3_600_000)
    script = wrk_script(body, {})
    ceiling, ceiling_load = bare_route(script, seconds, durable=False)
    durable, durable_load = bare_route(script, seconds, durable=True)

    server = Server(**SERVER_ENV).start()
    try:
        headers = asyncio.run(register_owner(server.port, "limits"))
        script = wrk_script(body, headers)
        run_wrk(f"{server.url}/v1/queues/register", script, 2)
        cpu_before = server.cpu_s()
        measured = run_wrk(f"{server.url}/v1/queues/register", script, seconds)
        cpu_per_request = (server.cpu_s() - cpu_before) / (measured["rps"] * seconds)
        measured_load = load()
    finally:
        assert server.proc is not None
        server.proc.kill()
    print(
        f"registrations (wrk -t2 -c{CONNECTIONS}, {seconds} s): server "
        f"{measured['rps']:,.0f}/s p50 {measured['p50']:.2f} ms p99 {measured['p99']:.2f} ms "
        f"errors {measured['errors']:.0f}, CPU per registration "
        f"{cpu_per_request * 1e6:.0f} us ({measured_load}) | bare route "
        f"{ceiling['rps']:,.0f}/s p99 {ceiling['p99']:.2f} ms ({ceiling_load}) | ratio "
        f"{measured['rps'] / ceiling['rps']:.2f} (target >= 0.6, p99 <= 10 ms) | the bare "
        f"route committing each body (synchronous=FULL) {durable['rps']:,.0f}/s p99 "
        f"{durable['p99']:.2f} ms ({durable_load}), its ratio to the bare route "
        f"{durable['rps'] / ceiling['rps']:.2f}, the server's to it "
        f"{measured['rps'] / durable['rps']:.2f}"
    )


# -- burst: CurlMulti alone, then the server ---------------------------------------------------


@dataclass(frozen=True)
class Ceiling:
    """CurlMulti alone: elapsed seconds, CPU seconds, and when it started (epoch ms)."""

    elapsed_s: float
    cpu_s: float
    started_ms: float


def easy_handles(url: str) -> list[Any]:
    """CURL_PARALLEL handles, each set to POST a small JSON body to ``url``."""
    body = json.dumps({"n": 1})
    handles = []
    for _ in range(CURL_PARALLEL):
        easy = pycurl.Curl()
        easy.setopt(pycurl.URL, url)
        easy.setopt(pycurl.POSTFIELDS, body)
        easy.setopt(pycurl.HTTPHEADER, ["Content-Type: application/json"])
        handles.append(easy)
    return handles


def curl_alone(url: str, count: int) -> Ceiling:
    """CurlMulti POSTing ``count`` small bodies, CURL_PARALLEL at a time."""
    multi = pycurl.CurlMulti()
    multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, CURL_PARALLEL)
    free = easy_handles(url)
    for easy in free:
        easy.setopt(pycurl.WRITEDATA, BytesIO())
    pending, done = count, 0
    started_ms = time.time() * 1000
    started, cpu_started = time.perf_counter(), time.process_time()
    while done < count:
        while free and pending:
            multi.add_handle(free.pop())
            pending -= 1
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        _, finished, failed = multi.info_read()
        for easy in finished + [f[0] for f in failed]:
            multi.remove_handle(easy)
            free.append(easy)
            done += 1
        if not (finished or failed):
            multi.select(0.01)
    ceiling = Ceiling(time.perf_counter() - started, time.process_time() - cpu_started, started_ms)
    for easy in free:
        easy.close()
    multi.close()
    return ceiling


def socket_driven_alone(url: str, count: int) -> Ceiling:
    """The same calls as ``curl_alone``, with libcurl driven the way an event loop must
    drive it: ``socket_action`` on the sockets an epoll set reports ready, libcurl's
    socket and timer callbacks keeping that set and a deadline, the response headers and
    body collected by C methods. No loop, no per-call bookkeeping: what that way of
    driving libcurl from Python costs before any server work."""
    epoll = select.epoll()
    deadline: list[float | None] = [None]

    def on_socket(event: int, fd: int, multi: object, data: object) -> None:
        if event == pycurl.POLL_REMOVE:
            with contextlib.suppress(OSError):
                epoll.unregister(fd)
            return
        mask = (select.EPOLLIN if event & pycurl.POLL_IN else 0) | (
            select.EPOLLOUT if event & pycurl.POLL_OUT else 0
        )
        try:
            epoll.modify(fd, mask)
        except FileNotFoundError:
            epoll.register(fd, mask)

    def on_timer(timeout_ms: int) -> None:
        deadline[0] = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000

    multi = pycurl.CurlMulti()
    multi.setopt(pycurl.M_SOCKETFUNCTION, on_socket)
    multi.setopt(pycurl.M_TIMERFUNCTION, on_timer)
    multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, CURL_PARALLEL)
    free = easy_handles(url)
    pending, done = count, 0
    started_ms = time.time() * 1000
    started, cpu_started = time.perf_counter(), time.process_time()
    while done < count:
        while free and pending:
            easy = free.pop()
            easy.setopt(pycurl.HEADERFUNCTION, [].append)
            easy.setopt(pycurl.WRITEFUNCTION, BytesIO().write)
            multi.add_handle(easy)
            pending -= 1
        due = deadline[0]
        for fd, events in epoll.poll(0.01 if due is None else max(due - time.monotonic(), 0)):
            action = pycurl.CSELECT_IN if events & select.EPOLLIN else 0
            if events & select.EPOLLOUT:
                action |= pycurl.CSELECT_OUT
            multi.socket_action(fd, action)
        if deadline[0] is not None and time.monotonic() >= deadline[0]:
            deadline[0] = None
            multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        queued = 1
        while queued:
            queued, finished, failed = multi.info_read()
            for easy in finished + [f[0] for f in failed]:
                easy.getinfo(pycurl.RESPONSE_CODE)
                multi.remove_handle(easy)
                free.append(easy)
                done += 1
    ceiling = Ceiling(time.perf_counter() - started, time.process_time() - cpu_started, started_ms)
    for easy in free:
        easy.close()
    multi.close()
    epoll.close()
    return ceiling


async def dispatcher_burst(url: str, count: int) -> Ceiling:
    """``count`` calls like the server's (JSON body, task id and attempt headers) through a
    ``CurlDispatcher``, started START_CHUNK at a time with the loop running between."""
    dispatcher = CurlDispatcher(CurlSettings(egress=EgressPolicy.parse(allow="127.0.0.1/32")))
    await dispatcher.start()
    request = HttpRequest(url=url, method="POST", data_json=json.dumps({"n": 1}))
    prepared = [
        dispatcher.prepare(
            Call(
                request=request,
                config=TaskConfig(),
                headers=(("X-Tasks-Queue-Id", f"call-{n}"), ("X-Tasks-Attempt", "1")),
                timeout_ms=30_000,
                max_body_bytes=32_768,
                owner_id="bench",
            )
        )
        for n in range(count)
    ]
    started_ms = time.time() * 1000
    started, cpu_started = time.perf_counter(), time.process_time()
    futures = []
    for index in range(0, count, START_CHUNK):
        futures += [dispatcher.submit(call) for call in prepared[index : index + START_CHUNK]]
        await asyncio.sleep(0)
    await asyncio.gather(*futures)
    ceiling = Ceiling(time.perf_counter() - started, time.process_time() - cpu_started, started_ms)
    await dispatcher.close()
    return ceiling


def dispatcher_alone(url: str, count: int) -> Ceiling:
    import uvloop

    # with the server's collector settings: by default a 3,000-call run spends 12-55 ms
    # in full collections the server does not make
    tune_collector()
    return uvloop.run(dispatcher_burst(url, count))


async def register_all(port: int, headers: dict[str, str], bodies: list[bytes]) -> int:
    queue = list(bodies)
    errors = 0

    async def worker() -> None:
        nonlocal errors
        client = RawClient(port)
        while queue:
            status, _ = await client.request("POST", "/v1/queues/register", queue.pop(), headers)
            errors += status != 201
        client.close()

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return errors


def wait_arrivals(sink: Sink, count: int, timeout: float) -> list[float]:
    sink.wait_count(count, timeout)
    return sorted(a[0] * 1000 for a in sink.arrivals())


def burst_figures(arrivals: list[float], due_ms: int) -> tuple[float, float]:
    """(first arrival after due, last arrival after due), both in ms."""
    return arrivals[0] - due_ms, arrivals[-1] - due_ms


def burst(count: int, restart: bool) -> None:
    sink = Sink()
    try:
        curl_alone(sink.url(), count)  # warm-up: the sink's first connections
        sink.reset()
        rounds = []
        for _ in range(CEILING_ROUNDS):
            ceiling = curl_alone(sink.url(), count)
            rounds.append((ceiling, min(a[0] for a in sink.arrivals()) * 1000 - ceiling.started_ms))
            sink.reset()
        rounds.sort(key=lambda r: r[0].elapsed_s)
        ceiling, curl_first = rounds[len(rounds) // 2]
        ceiling_spread = f"{rounds[0][0].elapsed_s * 1000:.0f}-{rounds[-1][0].elapsed_s * 1000:.0f}"
        ceiling_load = load()
        driven = socket_driven_alone(sink.url(), count)
        sink.reset()
        floor = dispatcher_alone(sink.url(), count)
        sink.reset()
        server = Server(**SERVER_ENV).start()
        try:
            headers = asyncio.run(register_owner(server.port, "limits"))
            due = now_ms() + (RESTART_LEAD_MS if restart else BURST_LEAD_MS)
            bodies = [task_body(sink.url(), executeAt=due) for _ in range(count)]
            errors = asyncio.run(register_all(server.port, headers, bodies))
            label = "burst"
            if restart:
                assert server.proc is not None
                server.proc.kill()  # kill -9, then start again well before the due time
                server.start()
                label = "burst after kill -9 and restart"
            cpu_before = server.cpu_s()
            arrivals = wait_arrivals(sink, count, 60 + (due - now_ms()) / 1000)
            time.sleep(max(arrivals[-1] / 1000 + 1 - time.time(), 0))  # outcomes recorded
            server_cpu = server.cpu_s() - cpu_before
        finally:
            assert server.proc is not None
            server.proc.kill()
    finally:
        sink.proc.kill()
    first, last = burst_figures(arrivals, due)
    ceiling_ms = ceiling.elapsed_s * 1000
    print(
        f"{label}: {count} due at one instant (registration errors {errors}), arrived "
        f"{len(arrivals)}; first +{first:.1f} ms (target <= 5 ms; CurlMulti alone's first "
        f"+{curl_first:.1f} ms), drained +{last:.0f} ms | CurlMulti alone {ceiling_ms:.0f} ms "
        f"(median of {CEILING_ROUNDS}: {ceiling_spread} ms, {ceiling_load}) | ratio "
        f"{last / ceiling_ms:.2f} (target <= 2) | CPU per call: "
        f"server {server_cpu / count * 1e6:.0f} us, CurlMulti alone "
        f"{ceiling.cpu_s / count * 1e6:.0f} us ({load()}) | libcurl driven by its sockets "
        f"alone {driven.elapsed_s * 1000:.0f} ms (ratio {driven.elapsed_s / ceiling.elapsed_s:.2f}"
        f"), CPU per call {driven.cpu_s / count * 1e6:.0f} us | the server's dispatcher alone "
        f"{floor.elapsed_s * 1000:.0f} ms (ratio {floor.elapsed_s / ceiling.elapsed_s:.2f}), "
        f"CPU per call {floor.cpu_s / count * 1e6:.0f} us"
    )


def spread() -> None:
    """SPREAD_TASKS due one every SPREAD_STEP_MS: each call's lateness at the sink."""
    sink = Sink()
    server = Server(**SERVER_ENV).start()
    try:
        headers = asyncio.run(register_owner(server.port, "limits"))
        start = now_ms() + BURST_LEAD_MS
        planned = [start + n * SPREAD_STEP_MS for n in range(SPREAD_TASKS)]
        bodies = [task_body(sink.url(), executeAt=at) for at in planned]
        ids, _, errors, _ = asyncio.run(register_many(server.port, headers, bodies))
        due = dict(zip(ids, planned, strict=True))
        wait_arrivals(sink, SPREAD_TASKS, 60 + (planned[-1] - now_ms()) / 1000)
        arrivals = sink.arrivals()
    finally:
        assert server.proc is not None
        server.proc.kill()
        sink.proc.kill()
    lateness = [at * 1000 - due[task_id] for at, task_id, _ in arrivals if task_id in due]
    print(
        f"spread: {SPREAD_TASKS} due one every {SPREAD_STEP_MS} ms (registration errors "
        f"{errors}), arrived {len(arrivals)}; lateness p50 {percentile(lateness, 50):.1f} ms, "
        f"p99 {percentile(lateness, 99):.1f} ms (target <= 3 ms), max {max(lateness):.1f} ms "
        f"({load()})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per run")
    parser.add_argument("--burst", type=int, default=3000, help="tasks in the burst")
    parser.add_argument(
        "--only", nargs="*", default=[], choices=["registrations", "burst", "restart", "spread"]
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (sh install.sh installs it)")
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {cores} cores, {time.strftime('%Y-%m-%d')}")
    if not args.only or "registrations" in args.only:
        registrations(args.seconds)
    if not args.only or "burst" in args.only:
        burst(args.burst, restart=False)
    if not args.only or "restart" in args.only:
        burst(args.burst, restart=True)
    if not args.only or "spread" in args.only:
        spread()


if __name__ == "__main__":
    main()
