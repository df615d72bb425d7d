"""Long-poll latency: how soon ``GET /v1/queues/:id/result?wait=`` answers after the
task's call completes, against a real server and a local sink.

    .venv/bin/python -m bench.bench_result_wait [--tasks N]

For each task (due 200 ms after registration) one client waits on its result; the figure
is the time from the call's arrival at the sink to the long poll's answer at the client,
which covers the response, the outcome's group commit (an fsync with the default
SQLITE_SYNCHRONOUS=FULL) and the in-memory wake-up. Asserts nothing about speed.

Last run (2-core container shared with other work, 200 tasks, 20 waiting at a time):
p50 6.0 ms, p99 11.5 ms, max 13.3 ms (target: within 50 ms of completion).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench.common import RawClient, Server, Sink, percentile, register_owner, task_body

CONCURRENCY = 20


async def one(port: int, headers: dict[str, str], url: str) -> tuple[str, float]:
    client = RawClient(port)
    status, body = await client.request(
        "POST", "/v1/queues/register", task_body(url, executionDelay=200), headers
    )
    assert status == 201, body
    task_id = json.loads(body)["id"]
    status, body = await client.request("GET", f"/v1/queues/{task_id}/result?wait=30", b"", headers)
    answered = time.time()
    client.close()
    assert status == 200, (status, body)
    return task_id, answered


async def run(tasks: int) -> None:
    sink = Sink()
    server = Server().start()
    try:
        headers = await register_owner(server.port, "bench-wait")
        answered: dict[str, float] = {}
        for start in range(0, tasks, CONCURRENCY):
            batch = min(CONCURRENCY, tasks - start)
            results = await asyncio.gather(
                *(one(server.port, headers, sink.url()) for _ in range(batch))
            )
            answered.update(results)
        arrived = {task_id: at for at, task_id, _ in sink.arrivals()}
        delays = [(answered[t] - arrived[t]) * 1000 for t in answered if t in arrived]
        print(f"tasks: {len(delays)} (of {tasks})")
        print(
            "answer after the call arrived (ms): "
            f"p50 {percentile(delays, 50):.1f}, p99 {percentile(delays, 99):.1f}, "
            f"max {max(delays):.1f}"
        )
    finally:
        assert server.proc is not None
        server.proc.terminate()
        sink.proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=200)
    asyncio.run(run(parser.parse_args().tasks))


if __name__ == "__main__":
    main()
