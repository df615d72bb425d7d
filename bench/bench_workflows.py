"""Workflow benchmark: many runs of a 5-step diamond started at once, against the real
server and a local sink.

    .venv/bin/python -m bench.bench_workflows [--runs 1000]

Each run is a → (b, c, d) → e. Prints runs/s (from the first start to the last run
finished) and the step-to-dependant latency: the time from the arrival of a step's last
dependency at the sink to the arrival of the step itself (the dependency's answer, the
outcome's commit, releasing and rendering the step, its claim and its call). Asserts
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


def diamond(url: str, n: int) -> bytes:
    steps = [
        {
            "id": step_id,
            "dependsOn": list(deps),
            "httpRequest": {"url": url, "method": "POST", "data": {"run": n, "step": step_id}},
        }
        for step_id, deps in DIAMOND
    ]
    return json.dumps({"name": "diamond", "input": {"n": n}, "steps": steps}).encode()


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


async def wait_all_done(port: int, headers: dict[str, str], count: int, timeout: float) -> float:
    client = RawClient(port)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            _, answer = await client.request(
                "GET", "/v1/workflows?state=SUCCESS&limit=1000", b"", headers
            )
            found = json.loads(answer)["runs"]
            if len(found) >= count:
                return max(run["finishedAt"] for run in found) / 1000
            await asyncio.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(f"not all {count} runs finished within {timeout} s")


async def main(runs: int) -> None:
    server = Server(
        EGRESS_ALLOW="127.0.0.1/32",
        **({"MAX_HOST_CONNECTIONS": os.environ["HOSTCAP"]} if "HOSTCAP" in os.environ else {}),
    ).start()
    sink = Sink()
    try:
        headers = await register_owner(server.port, "bench")
        bodies = [diamond(sink.url(), n) for n in range(runs)]
        started = time.time()
        ids = await start_runs(server.port, headers, bodies)
        registered = time.time()
        finished = await wait_all_done(server.port, headers, min(runs, 1000), 120)
        arrivals = {task_id: at for at, task_id, _ in sink.arrivals()}
        details = await fetch_runs(server.port, headers, ids)
        latencies = []
        for run in details:
            steps = {s["id"]: s for s in run["steps"]}
            for step_id, deps in DIAMOND[1:]:
                last_dep = max(arrivals[steps[d]["taskId"]] for d in deps)
                latencies.append((arrivals[steps[step_id]["taskId"]] - last_dep) * 1000)
        states = {run["state"] for run in details}
        print(
            f"workflows: {runs} runs of a 5-step diamond (a → b, c, d → e) started in "
            f"{registered - started:.2f} s; all {sorted(states)} after {finished - started:.2f} s "
            f"→ {runs / (finished - started):,.0f} runs/s, {5 * runs / (finished - started):,.0f} "
            f"steps/s; {len(arrivals)} calls for {5 * runs} steps"
        )
        print(
            f"  step-to-dependant latency: p50 {percentile(latencies, 50):.1f} ms, "
            f"p99 {percentile(latencies, 99):.1f} ms, max {max(latencies):.1f} ms "
            "(target: p99 <= 10 ms)"
        )
        print(f"  server RSS {server.rss_mb():.0f} MB, CPU {server.cpu_s():.1f} s")
    finally:
        assert server.proc is not None
        server.proc.kill()
        sink.proc.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    import uvloop

    uvloop.run(main(parser.parse_args().runs))
