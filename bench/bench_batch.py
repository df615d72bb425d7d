"""Batch registration throughput: the real server over HTTP, 1,000 tasks per request.

    .venv/bin/python -m bench.bench_batch [--tasks 200000] [--clients 4] [--postgres]

With ``--postgres`` the server runs on PostgreSQL: DATABASE_URL's server (a new database
in it), or a throwaway cluster started here (``initdb``/``pg_ctl``, fsync on).

Prints tasks/s, request latencies, errors, the server's CPU time per task and the load
average (the machine is shared: a figure means little without it); asserts nothing about
speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from bench.bench_nodes import postgres
from bench.common import RawClient, Server, percentile, register_owner

BATCH = 1000


def batch_body(start: int) -> bytes:
    items = [
        {
            "httpRequest": {"url": "https://example.com/hook", "method": "POST", "data": {"n": n}},
            "config": {"executionDelay": 3_600_000},
        }
        for n in range(start, start + BATCH)
    ]
    return json.dumps(items).encode()


async def run(total: int, clients: int, database_url: str | None = None) -> None:
    env = {"MAX_SIZE_BODY_BATCH": str(16 * 1024 * 1024)}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    server = Server(**env).start()
    try:
        headers = await register_owner(server.port, "bench-batch")
        bodies = [batch_body(start) for start in range(0, total, BATCH)]
        latencies: list[float] = []
        counts = {"created": 0, "errors": 0}

        async def worker() -> None:
            client = RawClient(server.port)
            while bodies:
                body = bodies.pop()
                started = time.perf_counter()
                status, payload = await client.request(
                    "POST", "/v1/queues/register/batch", body, headers
                )
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    counts["errors"] += BATCH
                    continue
                for item in json.loads(payload):
                    counts["created" if item["status"] == 201 else "errors"] += 1
            client.close()

        load_before = os.getloadavg()[0]
        cpu_before = server.cpu_s()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - started
        cpu = server.cpu_s() - cpu_before
        store = "PostgreSQL" if database_url else "SQLite"
        print(
            f"batch registration ({store}): {total} tasks in {total // BATCH} requests, "
            f"{clients} clients"
        )
        print(f"  throughput      {counts['created'] / wall:,.0f} tasks/s (target >= 30,000)")
        print(f"  errors          {counts['errors']} (target 0)")
        print(
            f"  request latency p50 {percentile(latencies, 50) * 1000:.1f} ms, "
            f"p99 {percentile(latencies, 99) * 1000:.1f} ms"
        )
        print(
            f"  server CPU      {cpu:.1f} s for {wall:.1f} s wall "
            f"({cpu / max(counts['created'], 1) * 1e6:.0f} us per task)"
        )
        print(f"  load average    {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    finally:
        server.proc and server.proc.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--postgres", action="store_true", help="run the server on PostgreSQL")
    args = parser.parse_args()
    if not args.postgres:
        asyncio.run(run(args.tasks, args.clients))
        return
    with postgres() as pg:
        asyncio.run(run(args.tasks, args.clients, pg.create_database()))


if __name__ == "__main__":
    main()
