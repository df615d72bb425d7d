"""Workflow benchmark: many runs of a 5-step diamond started at once, against the real
server and a local sink.

    .venv/bin/python -m bench.bench_workflows [--runs 1000]

Each run is a → (b, c, d) → e. Two rounds on one server, each with its own runs:

- at once: the runs are registered first with one ``config.executeAt``, so their first
  steps all become due at the same instant (the issue's "started at once");
- while registering: each run starts as soon as the API has taken it, so the steps run
  beside a storm of 32 connections registering runs as fast as the server takes them.

Each prints runs/s (from the first step's start, or the first registration, to the last
run finished) and the step-to-dependant latency: the time from the arrival of a step's
last dependency at the sink to the arrival of the step itself (the dependency's answer,
the outcome's commit, releasing and rendering the step, its claim and its call). Asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from bench.common import RawClient, Server, Sink, percentile, register_owner

CONNECTIONS = 32
DIAMOND = (("a", ()), ("b", ("a",)), ("c", ("a",)), ("d", ("a",)), ("e", ("b", "c", "d")))


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


async def start_runs(port: int, headers: dict[str, str], bodies: list[bytes]) -> list[str]:
    queue = list(enumerate(bodies))
    ids = [""] * len(bodies)

    async def worker() -> None:
        client = RawClient(port)
        while queue:
            index, body = queue.pop()
            status, answer = await client.request("POST", "/v1/workflows", body, headers)
            assert status == 201, answer
            ids[index] = json.loads(answer)["id"]
        client.close()

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return ids


async def fetch_runs(port: int, headers: dict[str, str], ids: list[str]) -> list[dict]:
    queue = list(ids)
    runs: list[dict] = []

    async def worker() -> None:
        client = RawClient(port)
        while queue:
            status, answer = await client.request(
                "GET", f"/v1/workflows/{queue.pop()}", b"", headers
            )
            assert status == 200, answer
            runs.append(json.loads(answer))
        client.close()

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return runs


async def wait_all_done(
    port: int, headers: dict[str, str], ids: list[str], timeout: float
) -> float:
    """When the last of the runs ``ids`` finished (epoch s), polling the owner's runs."""
    client = RawClient(port)
    deadline = time.monotonic() + timeout
    wanted = set(ids)
    try:
        while time.monotonic() < deadline:
            _, answer = await client.request(
                "GET", f"/v1/workflows?state=SUCCESS&limit={len(ids)}", b"", headers
            )
            found = [run for run in json.loads(answer)["runs"] if run["id"] in wanted]
            if len(found) >= len(wanted):
                return max(run["finishedAt"] for run in found) / 1000
            await asyncio.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(f"not all {len(ids)} runs finished within {timeout} s")


async def measure(
    server: Server, sink: Sink, headers: dict[str, str], runs: int, at_once: bool
) -> None:
    """One round: start ``runs`` diamonds (at once, or as fast as the API takes them),
    wait for them, and print the figures."""
    sink.reset()
    started = time.time()
    # at once: due a moment after all are registered (the registration rate measured in
    # the other round, with room to spare)
    execute_at = int((started + 2 + runs / 100) * 1000) if at_once else None
    bodies = [diamond(sink.url(), n, execute_at) for n in range(runs)]
    ids = await start_runs(server.port, headers, bodies)
    registered = time.time()
    if execute_at is not None:
        if registered * 1000 > execute_at:
            print(f"  (registration ended {registered * 1000 - execute_at:.0f} ms after the start)")
        started = execute_at / 1000
    finished = await wait_all_done(server.port, headers, ids, 120)
    arrivals = {task_id: at for at, task_id, _ in sink.arrivals()}
    details = await fetch_runs(server.port, headers, ids)
    latencies = []
    for run in details:
        steps = {s["id"]: s for s in run["steps"]}
        for step_id, deps in DIAMOND[1:]:
            last_dep = max(arrivals[steps[d]["taskId"]] for d in deps)
            latencies.append((arrivals[steps[step_id]["taskId"]] - last_dep) * 1000)
    states = sorted({run["state"] for run in details})
    took = finished - started
    how = (
        "at once"
        if at_once
        else f"while registering (API took them in {registered - started:.2f} s)"
    )
    print(
        f"workflows, {runs} runs of a 5-step diamond (a → b, c, d → e) started {how}: "
        f"all {states} after {took:.2f} s → {runs / took:,.0f} runs/s, "
        f"{5 * runs / took:,.0f} steps/s; {len(arrivals)} calls for {5 * runs} steps"
    )
    print(
        f"  step-to-dependant latency: p50 {percentile(latencies, 50):.1f} ms, "
        f"p99 {percentile(latencies, 99):.1f} ms, max {max(latencies):.1f} ms "
        "(target: p99 <= 10 ms)"
    )


async def main(runs: int) -> None:
    server = Server(
        EGRESS_ALLOW="127.0.0.1/32",
        **({"MAX_HOST_CONNECTIONS": os.environ["HOSTCAP"]} if "HOSTCAP" in os.environ else {}),
    ).start()
    sink = Sink()
    try:
        headers = await register_owner(server.port, "bench")
        for at_once in (True, False):
            await measure(server, sink, headers, runs, at_once)
        print(f"  server RSS {server.rss_mb():.0f} MB, CPU {server.cpu_s():.1f} s (both rounds)")
    finally:
        assert server.proc is not None
        server.proc.kill()
        sink.proc.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    import uvloop

    uvloop.run(main(parser.parse_args().runs))
