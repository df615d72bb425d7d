"""Catch-up storm: 10,000 overdue tasks across 10 flow-control keys after a restart.

    .venv/bin/python -m bench.bench_storm [--tasks 10000] [--keys 10] [--rate 100]
                                          [--parallelism 10] [--clients 8]

The tasks are registered (batches of 1,000) due a few seconds ahead, the server is stopped
before they fall due and started again once all are overdue. Each key allows ``--rate``
starts per second (burst = rate) and ``--parallelism`` calls in flight; the sink holds
every call 20 ms and records when each started and ended, by key. While the server drains
the backlog, ``--clients`` concurrent API clients read storm tasks
(``GET /v1/queues/:id``) and register new tasks (no key, due in an hour), timing each
request. Prints every figure beside its target; asserts nothing about speed.

"Limits hold exactly" is checked at the sink: each key's starts are replayed through the
key's own token bucket (capacity = rate, refilled at rate per second), and a start that
finds no token is a violation. The engine paces a key's claims and, with a second bucket,
its sends (a call leaves only with a send token), so what is left between its bucket and
the sink's is the time from the send to the sink reading the request: the bench also
prints the lateness (ms) the sink must allow for the bucket to hold with no violation.
The calls in flight per key are counted from the sink's start and end times, and the rate
after the burst is each key's starts beyond the burst over its drain time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

from bench.common import ROOT, Proc, RawClient, Server, free_port, percentile, register_owner

SINK_DELAY_S = 0.02
BATCH = 1000


# -- the sink (a subprocess: python -m bench.bench_storm --sink PORT) ---------------------


async def _sink_main(port: int) -> None:
    records: list[tuple[float, float, str]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                if path == "/__records":
                    body = json.dumps(records).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                    writer.write(body)
                elif path == "/__count":
                    body = str(len(records)).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                    writer.write(body)
                else:
                    started = time.time()
                    await asyncio.sleep(SINK_DELAY_S)
                    records.append((started, time.time(), path))
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


class StormSink:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = Proc(
            [sys.executable, "-m", "bench.bench_storm", "--sink", str(self.port)], cwd=ROOT
        )

    async def get(self, path: str) -> bytes:
        deadline = time.monotonic() + 20
        while True:
            client = RawClient(self.port)
            try:
                status, body = await client.request("GET", path)
                assert status == 200
                return body
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
            finally:
                client.close()

    async def count(self) -> int:
        return int(await self.get("/__count"))

    async def records(self) -> list[tuple[float, float, str]]:
        return [tuple(r) for r in json.loads(await self.get("/__records"))]  # type: ignore[misc]


# -- the checks --------------------------------------------------------------------------


def bucket_violations(starts: list[float], rate: int, slack_ms: int = 0) -> int:
    """Starts that find no token in a bucket of ``rate`` tokens refilled at ``rate``/s
    (with ``slack_ms`` of extra credit for the jitter between admission and arrival)."""
    capacity = rate * (1 + slack_ms / 1000)
    tokens, last, violations = capacity, None, 0
    for at in sorted(starts):
        if last is not None:
            tokens = min(capacity, tokens + (at - last) * rate)
        last = at
        if tokens < 1 - 1e-9:
            violations += 1
        else:
            tokens -= 1
    return violations


def least_slack_ms(starts: list[float], rate: int) -> int:
    """The arrival jitter (ms) the sink must allow for every start to find a token: the
    bucket may hold that much more credit. 0 means the limit held exactly as seen."""
    slack = 0
    while bucket_violations(starts, rate, slack) and slack < 1000:
        slack += 1
    return slack


def most_in_flight(calls: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in calls] + [(e, -1) for _, e in calls])
    now = most = 0
    for _, delta in events:
        now += delta
        most = max(most, now)
    return most


def most_per_window(starts: list[float], window_s: float) -> int:
    ordered = sorted(starts)
    most, low = 0, 0
    for high, at in enumerate(ordered):
        while at - ordered[low] >= window_s:
            low += 1
        most = max(most, high - low + 1)
    return most


# -- the run -----------------------------------------------------------------------------


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def register(
    server: Server, headers: dict[str, str], sink: StormSink, args: argparse.Namespace, due_ms: int
) -> list[str]:
    ids: list[str] = []
    client = RawClient(server.port)
    for start in range(0, args.tasks, BATCH):
        items = []
        for n in range(start, min(start + BATCH, args.tasks)):
            key = f"k{n % args.keys}"
            flow = {"key": key, "rate": args.rate, "period": "1s", "parallelism": args.parallelism}
            items.append(
                {
                    "httpRequest": {
                        "url": f"http://127.0.0.1:{sink.port}/{key}",
                        "method": "POST",
                        "data": "x",
                    },
                    "config": {"executeAt": due_ms, "flowControl": flow, "retry": 0},
                }
            )
        status, body = await client.request(
            "POST", "/v1/queues/register/batch", json.dumps(items).encode(), headers
        )
        assert status == 200, body
        for item in json.loads(body):
            assert item["status"] == 201, item
            ids.append(item["task"]["id"])
    client.close()
    return ids


async def api_load(
    port: int,
    headers: dict[str, str],
    ids: list[str],
    sink_url: str,
    stop: asyncio.Event,
    latencies: dict[str, list[float]],
    errors: list[str],
) -> None:
    client = RawClient(port)
    rng = random.Random(port)
    later = json.dumps(
        {
            "httpRequest": {"url": sink_url, "method": "POST"},
            "config": {"executionDelay": 3_600_000},
        }
    ).encode()
    turn = 0
    try:
        while not stop.is_set():
            turn += 1
            if turn % 2:
                kind, method, path, body = "GET", "GET", f"/v1/queues/{rng.choice(ids)}", b""
            else:
                kind, method, path, body = "register", "POST", "/v1/queues/register", later
            started = time.perf_counter()
            status, payload = await client.request(method, path, body, headers)
            latencies[kind].append((time.perf_counter() - started) * 1000)
            if status not in (200, 201):
                errors.append(f"{method} {path}: {status} {payload[:100]!r}")
    finally:
        client.close()


async def run(args: argparse.Namespace) -> None:
    sink = StormSink()
    directory = Path(os.environ.get("BENCH_DIR", "")) if os.environ.get("BENCH_DIR") else None
    server = Server(directory, MAX_IN_FLIGHT="1000").start()
    try:
        headers = await register_owner(server.port, "storm")
        lead_ms = 8000
        due_ms = now_ms() + lead_ms
        began = time.monotonic()
        ids = await register(server, headers, sink, args, due_ms)
        registered_s = time.monotonic() - began
        assert server.proc is not None
        server.proc.terminate()
        early = await sink.count()
        wait_s = (due_ms - now_ms()) / 1000 + 1.0
        if wait_s > 0:
            await asyncio.sleep(wait_s)  # every task is overdue while the server is down
        restart = time.monotonic()
        server.start()
        ready_s = time.monotonic() - restart
        stop = asyncio.Event()
        latencies: dict[str, list[float]] = defaultdict(list)
        errors: list[str] = []
        loaders = [
            asyncio.create_task(
                api_load(
                    server.port,
                    headers,
                    ids,
                    f"http://127.0.0.1:{sink.port}/later",
                    stop,
                    latencies,
                    errors,
                )
            )
            for _ in range(args.clients)
        ]
        expected_s = args.tasks / (args.keys * args.rate)
        deadline = time.monotonic() + expected_s * 3 + 60
        while await sink.count() < args.tasks + early and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        drained_s = time.monotonic() - restart
        stop.set()
        await asyncio.gather(*loaders)
        records = await sink.records()
        load = os.getloadavg()
    finally:
        if server.proc is not None:
            server.proc.terminate()
        sink.proc.kill()
    report(
        args, records, latencies, errors, registered_s, early, ready_s, drained_s, expected_s, load
    )


def report(
    args: argparse.Namespace,
    records: list[tuple[float, float, str]],
    latencies: dict[str, list[float]],
    errors: list[str],
    registered_s: float,
    early: int,
    ready_s: float,
    drained_s: float,
    expected_s: float,
    load: tuple[float, float, float],
) -> None:
    by_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for started, ended, path in records:
        by_key[path.lstrip("/")].append((started, ended))
    violations = {
        key: bucket_violations([s for s, _ in calls], args.rate) for key, calls in by_key.items()
    }
    in_flight = {key: most_in_flight(calls) for key, calls in by_key.items()}
    per_second = {key: most_per_window([s for s, _ in calls], 1.0) for key, calls in by_key.items()}
    first = min(s for s, _, _ in records) if records else 0.0
    last = max(s for s, _, _ in records) if records else 0.0
    every = [v for values in latencies.values() for v in values]
    print(
        f"catch-up storm: {args.tasks:,} overdue tasks, {args.keys} keys x {args.rate}/s, "
        f"parallelism {args.parallelism}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores)"
    )
    print(
        f"  registered in {registered_s:.1f} s (batches of {BATCH}); "
        f"calls before the restart: {early} (target 0)"
    )
    print(f"  restart to /healthz:            {ready_s * 1000:8.0f} ms")
    print(f"  calls at the sink:              {len(records):8,}   (target {args.tasks:,})")
    print(
        f"  drain, first to last start:     {last - first:8.2f} s  "
        f"(limits allow {expected_s - 1:.2f} s: "
        f"{args.tasks // args.keys} per key at {args.rate}/s after a burst of {args.rate})"
    )
    print(f"  drain, restart to last call:    {drained_s:8.2f} s")
    slack = max(least_slack_ms([s for s, _ in calls], args.rate) for calls in by_key.values())
    after_burst = [
        (len(calls) - args.rate) / (max(s for s, _ in calls) - min(s for s, _ in calls))
        for calls in by_key.values()
        if len(calls) > args.rate
    ]
    print(
        f"  rate per key after the burst:   {max(after_burst, default=0):8.1f}/s "
        f"(target <= {args.rate}/s)"
    )
    print(
        f"  token bucket replayed at sink:  {sum(violations.values()):8} starts without a token "
        f"(target 0); 0 once arrivals may be {slack} ms late (send to arrival)"
    )
    print(
        f"  most starts per key in any 1 s: {max(per_second.values(), default=0):8}   "
        f"(target <= {2 * args.rate}: "
        f"burst {args.rate} + {args.rate} refilled)"
    )
    print(
        f"  most calls in flight per key:   {max(in_flight.values(), default=0):8}   "
        f"(target <= {args.parallelism})"
    )
    for kind in sorted(latencies):
        values = latencies[kind]
        print(
            f"  API {kind:<9} during drain: p50 {percentile(values, 50):6.1f} ms  p99 "
            f"{percentile(values, 99):6.1f} ms  (target p99 < 100 ms; {len(values):,} requests)"
        )
    print(
        f"  API all requests:             p99 {percentile(every, 99):6.1f} ms  (target < 100 ms); "
        f"errors {len(errors)} (target 0)"
    )
    for line in errors[:5]:
        print(f"    {line}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--parallelism", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        asyncio.run(_sink_main(args.sink))
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
