"""Registrations with API_PROCESSES=1 and 2 (the multi-process mode, README "Registration
against this machine's ceiling") beside the bare-framework route, under the same
``wrk -t2 -c32`` load, with SQLITE_SYNCHRONOUS=FULL.

    nice -n -15 .venv/bin/python -m bench.bench_api_processes [--seconds 8] [--rounds 2]

Each round measures the bare route, then the server with each process count. The tasks
are due in an hour and the scheduler's horizon is two hours, so every registration takes
the whole path of a near task (a registration made outside the engine's process is sent
to it as a wake-up and armed there) while no call goes out during the run. Prints
requests/s, p50/p99, errors, the ratio to the bare route of the same round, the server's
CPU per registration (all its processes) and the load generator's CPU; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from bench.common import ROOT, Proc, Server, free_port, register_owner, task_body, wait_http
from bench.limits import run_wrk, wrk_script

BODY = task_body("http://127.0.0.1:9/hook", executionDelay=3_600_000)
SERVER_ENV = {
    "SQLITE_SYNCHRONOUS": "FULL",
    "EGRESS_ALLOW": "127.0.0.1/32",
    "SCHEDULER_HORIZON_MS": "7200000",
}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and of its live children."""
    total = 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for each in (pid, *map(int, children)):
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def wrk_timed(url: str, script: Path, seconds: int) -> dict[str, float]:
    """run_wrk, plus the CPU seconds wrk used (it is a child of this process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = run_wrk(url, script, seconds)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures["wrk_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return figures


def connections_per_process(port: int) -> list[int]:
    """How many of the load's connections each process holds (the kernel does not spread
    them evenly over processes sharing one socket: read the figures beside this)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return sorted(collections.Counter(re.findall(r"pid=(\d+)", out)).values(), reverse=True)


def bare(seconds: int) -> dict[str, float]:
    port = free_port()
    proc = Proc([sys.executable, "-m", "bench.bare_app", str(port)], cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        script = wrk_script(BODY, {})
        url = f"http://127.0.0.1:{port}/v1/queues/register"
        run_wrk(url, script, 2)  # warm-up
        return wrk_timed(url, script, seconds)
    finally:
        proc.kill()


def server(processes: int, seconds: int) -> dict[str, Any]:
    started = Server(API_PROCESSES=str(processes), **SERVER_ENV).start()
    assert started.proc is not None
    try:
        wait_http(f"{started.url}/readyz")
        headers = asyncio.run(register_owner(started.port, "processes"))
        script = wrk_script(BODY, headers)
        url = f"{started.url}/v1/queues/register"
        run_wrk(url, script, 2)  # warm-up
        cpu_before = cpu_s(started.proc.pid)
        spread: list[list[int]] = []
        sample = threading.Timer(
            seconds / 2, lambda: spread.append(connections_per_process(started.port))
        )
        sample.start()
        figures = wrk_timed(url, script, seconds)
        sample.join()
        figures["spread"] = spread[0] if spread else []
        registered = figures["rps"] * seconds
        figures["server_us"] = (cpu_s(started.proc.pid) - cpu_before) / registered * 1e6
        return figures
    finally:
        started.proc.terminate()


def line(label: str, m: dict[str, Any], seconds: int, ceiling: float) -> str:
    text = (
        f"{label}: {m['rps']:,.0f}/s p50 {m['p50']:.2f} ms p99 {m['p99']:.2f} ms "
        f"errors {m['errors']:.0f} | ratio {m['rps'] / ceiling:.2f} | "
        f"wrk CPU {m['wrk_cpu_s'] / seconds * 100:.0f} % of a core"
    )
    if "server_us" in m:
        text += f" | server CPU {m['server_us']:.0f} µs per registration"
        text += f" | connections per process {m['spread']}"
    return f"{text} (load {os.getloadavg()[0]:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2])
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; wrk -t2 -c32, {args.seconds} s per figure")
    for number in range(1, args.rounds + 1):
        ceiling = bare(args.seconds)
        print(f"round {number}")
        print(line("  bare route", ceiling, args.seconds, ceiling["rps"]))
        for count in args.processes:
            measured = server(count, args.seconds)
            label = f"  API_PROCESSES={count}"
            print(line(label, measured, args.seconds, ceiling["rps"]) + " (target >= 0.6)")


if __name__ == "__main__":
    main()
