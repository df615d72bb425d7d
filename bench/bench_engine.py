"""Engine benchmark: the real server over HTTP with a local sink on this machine.

    .venv/bin/python -m bench.bench_engine [--only NAME ...]

Scenarios: registrations (32 clients), burst (3000 due at one instant), spread (2000
over 20 s), retries (spacing), crash (kill -9 and restart). Prints figures; asserts
nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from bench.common import RawClient, Server, Sink, percentile, register_owner, task_body

CLIENTS = 32


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def register_many(
    port: int, headers: dict[str, str], bodies: list[bytes], clients: int = CLIENTS
) -> tuple[list[str], list[float], int, float]:
    """Register every body over ``clients`` connections; (ids, latencies s, errors, wall s)."""
    queue = list(enumerate(bodies))
    ids: list[str] = [""] * len(bodies)
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        client = RawClient(port)
        while queue:
            index, body = queue.pop()
            started = time.perf_counter()
            status, payload = await client.request("POST", "/v1/queues/register", body, headers)
            latencies.append(time.perf_counter() - started)
            if status == 201:
                ids[index] = json.loads(payload)["id"]
            else:
                errors += 1
        client.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return ids, latencies, errors, time.perf_counter() - started


async def wait_arrivals(sink: Sink, count: int, timeout: float) -> list[tuple[float, str, str]]:
    deadline = time.monotonic() + timeout
    while sink.count() < count and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return sink.arrivals()


async def registrations(server: Server, sink: Sink, headers: dict[str, str]) -> None:
    bodies = [task_body(sink.url(), executionDelay=3_600_000) for _ in range(20_000)]
    await register_many(server.port, headers, bodies[:1000])  # warm-up
    ids, latencies, errors, wall = await register_many(server.port, headers, bodies)
    print(
        f"registrations: {len(bodies) / wall:,.0f}/s with {CLIENTS} clients, "
        f"p50 {percentile(latencies, 50) * 1000:.2f} ms, "
        f"p99 {percentile(latencies, 99) * 1000:.2f} ms, errors {errors}, "
        f"distinct ids {len(set(ids))}/{len(ids)}"
    )


async def burst(server: Server, sink: Sink, headers: dict[str, str]) -> None:
    due = now_ms() + 4000
    bodies = [task_body(sink.url(), executeAt=due) for _ in range(3000)]
    _, _, errors, wall = await register_many(server.port, headers, bodies)
    arrivals = await wait_arrivals(sink, 3000, 30)
    times = sorted(a[0] * 1000 - due for a in arrivals)
    span = (times[-1] - times[0]) / 1000 if len(times) > 1 else float("nan")
    print(
        f"burst: 3000 due at one instant (registered in {wall:.2f} s, errors {errors}); "
        f"arrived {len(arrivals)}; first +{times[0]:.1f} ms, last +{times[-1]:.1f} ms "
        f"after due; {len(times) / span:,.0f} calls/s"
    )


async def spread(server: Server, sink: Sink, headers: dict[str, str]) -> None:
    start = now_ms() + 3000
    planned = {}
    bodies = []
    for index in range(2000):
        at = start + index * 10  # 2000 over 20 s
        bodies.append(task_body(sink.url(), executeAt=at))
    ids, _, errors, _ = await register_many(server.port, headers, bodies)
    for index, task_id in enumerate(ids):
        planned[task_id] = start + index * 10
    arrivals = await wait_arrivals(sink, 2000, 40)
    lateness = [a[0] * 1000 - planned[a[1]] for a in arrivals if a[1] in planned]
    print(
        f"spread: 2000 over 20 s (errors {errors}); arrived {len(arrivals)}; lateness "
        f"p50 {percentile(lateness, 50):.1f} ms, p99 {percentile(lateness, 99):.1f} ms, "
        f"max {max(lateness):.1f} ms, min {min(lateness):.1f} ms"
    )


async def retries(server: Server, sink: Sink, headers: dict[str, str]) -> None:
    failing = Sink(status=503)
    try:
        bodies = [
            task_body(failing.url(), executionDelay=0, retry=3, retryInterval=200)
            for _ in range(100)
        ]
        await register_many(server.port, headers, bodies)
        arrivals = await wait_arrivals(failing, 400, 30)
        by_task: dict[str, list[float]] = {}
        for at, task_id, _ in sorted(arrivals):
            by_task.setdefault(task_id, []).append(at * 1000)
        counts = Counter(len(v) for v in by_task.values())
        gaps = [[b - a for a, b in itertools.pairwise(v)] for v in by_task.values()]
        deviation = max(abs(g - 200 * n) for v in gaps for n, g in enumerate(v, start=1))
        print(
            f"retries: 100 tasks x (1 + 3 retries, interval 200 ms exponential): attempts "
            f"per task {dict(counts)}; max deviation from 200/400/600 ms gaps "
            f"{deviation:.1f} ms"
        )
    finally:
        failing.proc.kill()


async def crash(server: Server, sink: Sink, headers: dict[str, str]) -> None:
    start = now_ms() + 2000
    bodies = [task_body(sink.url(), executeAt=start + index * 5) for index in range(2000)]
    ids, _, errors, _ = await register_many(server.port, headers, bodies)
    planned = {task_id: start + index * 5 for index, task_id in enumerate(ids)}
    while now_ms() < start + 4000:  # half of them have run
        await asyncio.sleep(0.01)
    assert server.proc is not None
    server.proc.kill()
    killed_at = now_ms()
    server.start()
    restarted_at = now_ms()
    arrivals = await wait_arrivals(sink, 2000, 40)
    seen = Counter(a[1] for a in arrivals if a[1] in planned)
    missing = len(planned) - len(seen)
    duplicates = sum(count - 1 for count in seen.values())
    # at-least-once: a call in flight at the kill is sent again; its resend carries the
    # same X-Tasks-Queue-Id and the next attempt number, so a target can drop it
    resent = {a[1] for a in arrivals if a[1] in planned and seen[a[1]] > 1}
    in_flight_at_kill = sum(
        1
        for task_id in resent
        if min(a[0] * 1000 for a in arrivals if a[1] == task_id) <= killed_at
        and len({a[2] for a in arrivals if a[1] == task_id}) == seen[task_id]
    )
    after = [
        a[0] * 1000 - planned[a[1]]
        for a in arrivals
        if a[1] in planned and planned[a[1]] > restarted_at
    ]
    overdue = [
        a[0] * 1000 - restarted_at
        for a in arrivals
        if a[1] in planned and killed_at <= planned[a[1]] <= restarted_at
    ]
    print(
        f"crash: kill -9 with 2000 tasks over 10 s (errors {errors}); down "
        f"{restarted_at - killed_at} ms; missing {missing}, duplicated {duplicates} "
        f"({in_flight_at_kill} in flight at the kill, resent with the next attempt "
        "number); "
        f"overdue ones ran {percentile(overdue, 99):.0f} ms (p99) after restart; "
        f"later ones lateness p99 {percentile(after, 99):.1f} ms"
    )


SCENARIOS: dict[str, Callable[[Server, Sink, dict[str, str]], Awaitable[None]]] = {
    "registrations": registrations,
    "burst": burst,
    "spread": spread,
    "retries": retries,
    "crash": crash,
}


async def main(only: list[str]) -> None:
    for name, scenario in SCENARIOS.items():
        if only and name not in only:
            continue
        # the retries scenario measures retry spacing against a target that always answers
        # 503: the host's circuit (which would hold those retries) is off for it
        env = {"HOST_CIRCUIT_FAILURES": "0"} if name == "retries" else {}
        server = Server(**env).start()
        sink = Sink()
        try:
            headers = await register_owner(server.port, "bench")
            await scenario(server, sink, headers)
            print(f"  server RSS {server.rss_mb():.0f} MB, CPU {server.cpu_s():.1f} s")
        finally:
            assert server.proc is not None
            server.proc.kill()
            sink.proc.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=[], choices=list(SCENARIOS))
    import uvloop

    uvloop.run(main(parser.parse_args().only))
