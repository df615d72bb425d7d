"""Workflow benchmark: many runs of a 5-step diamond, against the real server and a local
sink.

    .venv/bin/python -m bench.bench_workflows [--runs 1000]

Each run is a → (b, c, d) → e. Three rounds on one server, each with its own runs:

- at once: the runs are registered first with one ``config.executeAt``, so their first
  steps all become due at the same instant (the issue's "started at once"). Beside it,
  the machine's floor for the same calls: pycurl's CurlMulti alone, in this process,
  sending each follow-on call as soon as the answers it waits for are in, and the
  runs' first calls paced as the server paces them (workflows/pacing.py), or all at
  once on the server's connection cap per host;
- while registering: each run starts as soon as the API has taken it, so the steps run
  beside a storm of 32 connections registering runs as fast as the server takes them;
- at a sustained rate: runs started one by one, spread evenly, at half the rate the
  round before finished them (below what the server can take and run).

Each prints runs/s (from the first step's due time, or the first registration, to the
last run finished) and the step-to-dependant latency: the time from the arrival of a
step's last dependency at the sink to the arrival of the step itself (the dependency's
answer, the outcome's commit, releasing and rendering the step, its call). Asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import deque
from collections.abc import Callable
from io import BytesIO

import pycurl

from bench.common import RawClient, Server, Sink, percentile, register_owner
from tasks_server.workflows.pacing import WINDOW

CONNECTIONS = 32
DIAMOND = (("a", ()), ("b", ("a",)), ("c", ("a",)), ("d", ("a",)), ("e", ("b", "c", "d")))
HOST_CONNECTIONS = 256  # the server's default MAX_HOST_CONNECTIONS, for the floor
TARGET = "(target: p99 <= 10 ms)"


def diamond(url: str, n: int, execute_at_ms: int | None = None) -> bytes:
    steps = [
        {
            "id": step_id,
            "dependsOn": list(deps),
            "httpRequest": {"url": url, "method": "POST", "data": {"run": n, "step": step_id}},
        }
        for step_id, deps in DIAMOND
    ]
    body = {"name": "diamond", "input": {"n": n}, "steps": steps}
    if execute_at_ms is not None:
        body["config"] = {"executeAt": execute_at_ms}
    return json.dumps(body).encode()


def latencies(arrival: Callable[[int, str], float], runs: int) -> list[float]:
    """Step-to-dependant latencies (ms) of ``runs`` diamonds, from when each of their
    calls arrived at the sink: arrival(run, step) in epoch seconds."""
    found = []
    for run in range(runs):
        for step_id, deps in DIAMOND[1:]:
            last_dep = max(arrival(run, dep) for dep in deps)
            found.append((arrival(run, step_id) - last_dep) * 1000)
    return found


def latency_line(found: list[float]) -> str:
    return (
        f"p50 {percentile(found, 50):.1f} ms, p99 {percentile(found, 99):.1f} ms, "
        f"max {max(found):.1f} ms"
    )


# -- the floor: CurlMulti alone ----------------------------------------------------------------


def curl_alone(url: str, runs: int, window: int | None) -> float:
    """Send the calls of ``runs`` diamonds with CurlMulti alone: each follow-on call as
    soon as the calls it depends on have answered, and the runs' first calls while
    fewer than ``window`` calls are in progress (None: all at once, HOST_CONNECTIONS at a
    time, follow-on calls ahead of first calls still waiting). Returns the seconds it
    took."""
    multi = pycurl.CurlMulti()
    multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, HOST_CONNECTIONS)
    free: list[pycurl.Curl] = []
    follow_ons: deque[tuple[int, str]] = deque()
    roots = deque((run, "a") for run in range(runs))
    waiting_for = {(run, step): len(deps) for run in range(runs) for step, deps in DIAMOND}
    dependants: dict[str, list[str]] = {step: [] for step, _ in DIAMOND}
    for step, deps in DIAMOND:
        for dep in deps:
            dependants[dep].append(step)
    calls: dict[pycurl.Curl, tuple[int, str]] = {}
    room = HOST_CONNECTIONS if window is None else window

    def add(run: int, step: str) -> None:
        easy = free.pop() if free else pycurl.Curl()
        easy.setopt(pycurl.URL, url)
        easy.setopt(pycurl.POSTFIELDS, json.dumps({"run": run, "step": step}))
        easy.setopt(
            pycurl.HTTPHEADER,
            ["Content-Type: application/json", f"X-Tasks-Queue-Id: {run}.{step}"],
        )
        easy.setopt(pycurl.WRITEDATA, BytesIO())
        calls[easy] = (run, step)
        multi.add_handle(easy)

    started = time.perf_counter()
    done = 0
    while done < 5 * runs:
        while follow_ons:
            add(*follow_ons.popleft())
        while roots and len(calls) < room:
            add(*roots.popleft())
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        _, finished, failed = multi.info_read()
        for easy in finished + [f[0] for f in failed]:
            multi.remove_handle(easy)
            free.append(easy)
            run, step = calls.pop(easy)
            done += 1
            for dependant in dependants[step]:
                waiting_for[(run, dependant)] -= 1
                if waiting_for[(run, dependant)] == 0:
                    follow_ons.append((run, dependant))
        if not (finished or failed or follow_ons):
            multi.select(0.01)
    took = time.perf_counter() - started
    for easy in free:
        easy.close()
    multi.close()
    return took


def floor_round(sink: Sink, runs: int, window: int | None) -> str:
    sink.reset()
    took = curl_alone(sink.url(), runs, window)
    arrivals = {}
    for at, call_id, _ in sink.arrivals():
        run, _, step = call_id.partition(".")
        arrivals[(int(run), step)] = at
    found = latencies(lambda run, step: arrivals[(run, step)], runs)
    return f"{runs / took:,.0f} runs/s, step-to-dependant latency {latency_line(found)}"


def floor(sink: Sink, runs: int) -> None:
    """The machine's floor for the at-once round: the same calls without the server,
    paced as the server paces runs, and all at once."""
    print(
        f"  floor, CurlMulti alone sending the same calls, follow-on calls first: "
        f"first calls while fewer than {WINDOW} are in progress (as the server) "
        f"{floor_round(sink, runs, WINDOW)}; all at once on {HOST_CONNECTIONS} "
        f"connections {floor_round(sink, runs, None)}"
    )


# -- the server --------------------------------------------------------------------------------


async def start_runs(
    port: int, headers: dict[str, str], bodies: list[bytes], rate: float | None = None
) -> list[str]:
    """Start the runs, as fast as the API takes them on CONNECTIONS connections, or one
    every 1/``rate`` seconds."""
    queue = deque(enumerate(bodies))
    ids = [""] * len(bodies)
    began = time.perf_counter()

    async def worker() -> None:
        client = RawClient(port)
        while queue:
            index, body = queue.popleft()
            if rate is not None:
                await asyncio.sleep(max(0.0, began + index / rate - time.perf_counter()))
            status, answer = await client.request("POST", "/v1/workflows", body, headers)
            assert status == 201, answer
            ids[index] = json.loads(answer)["id"]
        client.close()

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return ids


async def fetch_runs(port: int, headers: dict[str, str], ids: list[str]) -> list[dict]:
    queue = list(enumerate(ids))
    runs: list[dict] = [{}] * len(ids)

    async def worker() -> None:
        client = RawClient(port)
        while queue:
            index, run_id = queue.pop()
            status, answer = await client.request("GET", f"/v1/workflows/{run_id}", b"", headers)
            assert status == 200, answer
            runs[index] = json.loads(answer)
        client.close()

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return runs


async def wait_all_done(port: int, headers: dict[str, str], timeout: float) -> None:
    """Wait until the owner has no run pending or running, asking for one run of each
    every 0.1 s (a cheap question: the answer is read off the index, so the waiting adds
    next to nothing to the server's load)."""
    client = RawClient(port)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            left = 0
            for state in ("PENDING", "RUNNING"):
                _, answer = await client.request(
                    "GET", f"/v1/workflows?state={state}&limit=1", b"", headers
                )
                left += len(json.loads(answer)["runs"])
            if not left:
                return
            await asyncio.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(f"the runs did not finish within {timeout} s")


async def measure(
    server: Server,
    sink: Sink,
    headers: dict[str, str],
    runs: int,
    how: str,
    rate: float | None = None,
) -> float:
    """One round: start ``runs`` diamonds ("at once", at ``rate`` runs/s, or as fast as
    the API takes them), wait for them, print the figures; returns runs/s."""
    sink.reset()
    started = time.time()
    # at once: due a moment after all are registered (the registration rate measured in
    # the other round, with room to spare)
    execute_at = int((started + 2 + runs / 100) * 1000) if how == "at once" else None
    bodies = [diamond(sink.url(), n, execute_at) for n in range(runs)]
    ids = await start_runs(server.port, headers, bodies, rate)
    registered = time.time()
    if execute_at is not None:
        if registered * 1000 > execute_at:
            print(f"  (registration ended {registered * 1000 - execute_at:.0f} ms after the start)")
        started = execute_at / 1000
    await wait_all_done(server.port, headers, 120)
    arrivals = {task_id: at for at, task_id, _ in sink.arrivals()}
    details = await fetch_runs(server.port, headers, ids)
    finished = max(run["finishedAt"] for run in details) / 1000
    tasks = [{s["id"]: s["taskId"] for s in run["steps"]} for run in details]
    found = latencies(lambda run, step: arrivals[tasks[run][step]], runs)
    states = sorted({run["state"] for run in details})
    took = finished - started
    if how == "while registering":
        how += f" (API took them in {registered - started:.2f} s)"
    print(
        f"workflows, {runs} runs of a 5-step diamond (a → b, c, d → e) started {how}: "
        f"all {states} after {took:.2f} s → {runs / took:,.0f} runs/s, "
        f"{5 * runs / took:,.0f} steps/s; {len(arrivals)} calls for {5 * runs} steps"
    )
    print(f"  step-to-dependant latency: {latency_line(found)} {TARGET}")
    return runs / took


async def main(runs: int) -> None:
    server = Server(
        EGRESS_ALLOW="127.0.0.1/32",
        **({"MAX_HOST_CONNECTIONS": os.environ["HOSTCAP"]} if "HOSTCAP" in os.environ else {}),
    ).start()
    sink = Sink()
    try:
        headers = await register_owner(server.port, "bench")
        await measure(server, sink, headers, runs, "at once")
        floor(sink, runs)
        capacity = await measure(server, sink, headers, runs, "while registering")
        rate = capacity / 2
        await measure(server, sink, headers, runs, f"at {rate:,.0f} runs/s", rate)
        print(f"  server RSS {server.rss_mb():.0f} MB, CPU {server.cpu_s():.1f} s (all rounds)")
    finally:
        assert server.proc is not None
        server.proc.kill()
        sink.proc.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    import uvloop

    uvloop.run(main(parser.parse_args().runs))
