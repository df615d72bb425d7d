"""Host isolation benchmark: one host that never answers must not make another host late.

    .venv/bin/python -m bench.bench_host_isolation [--hanging 1200] [--healthy 2000]

1,200 tasks call a host that accepts connections and never answers (timeout 5 s), all
due at one instant; 2,000 tasks for a fast local sink fall due over the next 4 s. Prints
the healthy host's lateness (arrival - due time) percentiles. MAX_IN_FLIGHT stays at its
default (1000), MAX_HOST_CONNECTIONS too (256). Asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench.bench_engine import register_many
from bench.common import Server, Sink, free_port, percentile, register_owner

# Registering 3,200 tasks takes a few seconds on a busy machine; every task must still be
# in the future when its registration arrives.
LEAD_MS = 15_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Hang:
    """A host that accepts connections, reads whatever comes and never answers."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        while await reader.read(65536):
            pass
        writer.close()

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        await asyncio.sleep(0.2)  # let each handler see its end of stream


def body(url: str, execute_at: int, timeout_ms: int) -> bytes:
    request = {"url": url, "method": "GET"}
    config = {"executeAt": execute_at, "timeout": timeout_ms, "retry": 0}
    return json.dumps({"httpRequest": request, "config": config}).encode()


async def run(hanging: int, healthy: int, extra_env: dict[str, str]) -> None:
    hang_port = free_port()
    hang = Hang()
    listener = await asyncio.start_server(hang.serve, "127.0.0.1", hang_port, backlog=4096)
    sink = Sink()
    server = Server(MAX_IN_FLIGHT="1000", **extra_env).start()
    try:
        headers = await register_owner(server.port, "isolation")
        start = now_ms() + LEAD_MS
        stuck = [body(f"http://127.0.0.1:{hang_port}/hang", start, 5000)] * hanging
        spread_ms = 4000
        due = [start + 500 + spread_ms * n // healthy for n in range(healthy)]
        fine = [body(sink.url(), at, 5000) for at in due]
        ids, _, errors, wall_s = await register_many(server.port, headers, stuck + fine)
        assert errors == 0, f"{errors} registrations failed"
        lead_s = (start - now_ms()) / 1000
        print(
            f"registered {len(ids)} tasks in {wall_s:.1f} s; the first fall due in {lead_s:.1f} s"
        )
        due_of = dict(zip(ids[hanging:], due, strict=True))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            if sink.count() >= healthy:
                break
        arrivals = sink.arrivals()
        lateness = [at * 1000 - due_of[task_id] for at, task_id, _ in arrivals]
        worst = max(
            ((at * 1000 - due_of[i], due_of[i] - start) for at, i, _ in arrivals), default=None
        )
        print(
            f"healthy host: {len(arrivals)}/{healthy} arrived beside {hanging} hanging calls; "
            f"lateness p50 {percentile(lateness, 50):.1f} ms, "
            f"p99 {percentile(lateness, 99):.1f} ms (target: a few ms), "
            f"max {max(lateness, default=0):.1f} ms"
        )
        if worst is not None:
            print(f"latest call: {worst[0]:.1f} ms late, due {worst[1]} ms after the hanging calls")
    finally:
        if server.proc is not None:
            server.proc.kill()
        sink.proc.kill()
        listener.close()
        await hang.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hanging", type=int, default=1200)
    parser.add_argument("--healthy", type=int, default=2000)
    parser.add_argument(
        "--env", nargs="*", default=[], metavar="NAME=VALUE", help="server settings"
    )
    args = parser.parse_args()
    asyncio.run(run(args.hanging, args.healthy, dict(pair.split("=", 1) for pair in args.env)))


if __name__ == "__main__":
    main()
